"""The placement registry: each DTensor placement kind as a *model* with single-process
semantics, so the oracle can compute what every rank holds without DTensor machinery.

Writing a placement model (the :class:`PlacementModel` protocol)::

    class ReverseShard:
        kind = "reverse_shard"                      # unique name, used in PlacementSpec.kind

        def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
            # a Hypothesis strategy of PlacementSpec(kind, params) valid for this tensor on
            # mesh dim `mesh_dim` of `mesh_shape`, given the placements `previous` drawn for
            # the mesh dims to its left (parent_shapes() gives the tensor's shapes there);
            # or None when the kind does not apply (e.g. 0-d tensors)

        def split(self, tensor, n, spec, generator) -> list[Tensor]:
            # what index i = 0..n-1 along ONE mesh dim of size n holds, given the tensor at
            # the parent level; generator (torch.Generator) for any randomness, e.g. Partial

        def join(self, parts, spec) -> Tensor:
            # the inverse: join(split(t, n, spec, g), spec) equals t (bitwise, NaN-aware)

        def to_torch(self, spec):
            # the torch Placement object; the only place torch.distributed.tensor is imported

A DTensor's local tensor at mesh coordinate ``(c0, c1, ...)`` is ``split`` applied mesh dim
by mesh dim, left to right (:func:`split_over_mesh`). Register an instance with
:func:`register_placement`, or let users name it as ``"package.module:ReverseShard"`` for
:func:`load_placement`.
"""

from strategies.placement_models import BUILTIN_PLACEMENTS
from strategies.placement_models.base import PlacementModel
from strategies.placement_models.index_shard import shard_indices, strided_shard_indices
from strategies.placement_models.mesh import (
    coordinate_of,
    has_uneven_strided_shard,
    join_over_mesh,
    local_shapes,
    parent_shapes,
    split_over_mesh,
    to_torch_placements,
)
from strategies.placement_models.partial import PartialModel, partial_reduce_ops
from strategies.placement_models.registry import (
    get_placement_model,
    load_placement,
    register_placement,
    registered_placements,
    unregister_placement,
)
from strategies.placement_models.replicate import ReplicateModel
from strategies.placement_models.shard import ShardModel
from strategies.placement_models.strided_shard import StridedShardModel

__all__ = [
    "BUILTIN_PLACEMENTS",
    "PartialModel",
    "PlacementModel",
    "ReplicateModel",
    "ShardModel",
    "StridedShardModel",
    "coordinate_of",
    "get_placement_model",
    "has_uneven_strided_shard",
    "join_over_mesh",
    "load_placement",
    "local_shapes",
    "parent_shapes",
    "partial_reduce_ops",
    "register_placement",
    "registered_placements",
    "shard_indices",
    "split_over_mesh",
    "strided_shard_indices",
    "to_torch_placements",
    "unregister_placement",
]
