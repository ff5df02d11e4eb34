"""``Shard(dim)``."""

from __future__ import annotations

from hypothesis import strategies as st

from strategies.built import built_once
from strategies.placement_models.index_shard import _IndexShardModel, shard_indices
from strategies.placement_models.mesh import parent_shapes
from strategies.spec import PlacementSpec, TensorSpec


class ShardModel(_IndexShardModel):
    """``Shard(dim)``: ``torch.chunk`` into n pieces along dim; trailing pieces may be empty."""

    kind = "shard"

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        if tensor.ndim == 0:
            return None
        n = mesh_shape[mesh_dim]
        # the parent shapes matter only after a _StridedShard (most draws have none)
        strided = any(p.kind == "strided_shard" for p in previous)
        parents = parent_shapes(tensor, mesh_shape, previous) if strided else set()
        dims = [d for d in range(tensor.ndim) if self._after_strided_ok(d, n, previous, parents)]
        if not dims:
            return None
        return _shards_on(tuple(dims))

    @staticmethod
    def _after_strided_ok(dim: int, n: int, previous, parents) -> bool:
        """``Shard(dim)`` after a ``_StridedShard(dim, sf)`` only in the pairing torch builds
        (FSDP over TP): ``sf`` equal to this mesh dim's size and every parent piece divisible
        by it. Other pairings make torch 2.13's redistribute put ranks out of step in a gloo
        collective (SIGABRT), which no utility is to blame for."""
        strided = [p for p in previous if p.kind == "strided_shard" and p.param("dim") == dim]
        return not strided or all(
            p.param("split_factor") == n and all(shape[dim] % n == 0 for shape in parents) for p in strided
        )

    def indices(self, size: int, n: int, spec: PlacementSpec) -> list[list[int]]:
        return shard_indices(size, n)

    def to_torch(self, spec: PlacementSpec):
        from torch.distributed.tensor import Shard

        return Shard(spec.param("dim"))


@built_once
def _shards_on(dims: tuple[int, ...]) -> st.SearchStrategy[PlacementSpec]:
    return st.sampled_from(list(dims)).map(lambda d: PlacementSpec("shard", (("dim", d),)))
