"""``_StridedShard(dim, split_factor)``, as FSDP over TP builds it."""

from __future__ import annotations

from hypothesis import strategies as st

from strategies.built import built_once
from strategies.placement_models.index_shard import _IndexShardModel, strided_shard_indices
from strategies.placement_models.mesh import parent_shapes
from strategies.spec import PlacementSpec, TensorSpec


class StridedShardModel(_IndexShardModel):
    """``_StridedShard(dim, split_factor=sf)``: see :func:`strided_shard_indices`.

    Drawn only as the first sharding of its tensor dim (a second sharding of the same dim
    with an arbitrary split_factor makes torch 2.13's ``full_tensor`` reorder rows), with
    uneven and empty pieces as well as even ones. ``StridedShardModel(allow_uneven=False)``
    (registered with ``replace=True``) draws only the even ones.
    """

    kind = "strided_shard"

    def __init__(self, max_split_factor: int = 4, allow_uneven: bool = True) -> None:
        self.max_split_factor = max_split_factor
        self.allow_uneven = allow_uneven

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        # torch 2.13 only round-trips a _StridedShard that is the first sharding of its dim
        taken = {p.param("dim") for p in previous if p.kind in ("shard", "strided_shard")}
        n = mesh_shape[mesh_dim]
        parents = () if self.allow_uneven else parent_shapes(tensor, mesh_shape, previous)
        options = [
            (d, sf)
            for d in range(tensor.ndim)
            if d not in taken
            for sf in range(1, self.max_split_factor + 1)
            if self.allow_uneven
            or all(len({len(p) for p in strided_shard_indices(shape[d], n, sf)}) == 1 for shape in parents)
        ]
        if not options:
            return None
        return _strided_shards_on(tuple(options))

    def indices(self, size: int, n: int, spec: PlacementSpec) -> list[list[int]]:
        return strided_shard_indices(size, n, spec.param("split_factor"))

    def to_torch(self, spec: PlacementSpec):
        from torch.distributed.tensor.placement_types import _StridedShard

        return _StridedShard(spec.param("dim"), split_factor=spec.param("split_factor"))


@built_once
def _strided_shards_on(options: tuple[tuple[int, int], ...]) -> st.SearchStrategy[PlacementSpec]:
    """``_StridedShard`` placements for the (dim, split_factor) pairs ``options``."""
    return st.sampled_from(list(options)).map(
        lambda o: PlacementSpec("strided_shard", (("dim", o[0]), ("split_factor", o[1])))
    )
