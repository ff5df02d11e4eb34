"""Placement models, one module per family, and the registry (:mod:`strategies.placements`
is the public face: it re-exports every name).

- :mod:`.base`: the :class:`PlacementModel` protocol.
- :mod:`.registry`: register, look up, load user models by reference.
- :mod:`.index_shard`: sharding as index sets along a tensor dim (base of the two below).
- :mod:`.shard`, :mod:`.strided_shard`, :mod:`.replicate`, :mod:`.partial`: the built-in kinds.
- :mod:`.mesh`: split and join over a whole mesh, mesh coordinates, torch placements.

Importing any of them registers the built-in kinds.
"""

from strategies.placement_models.partial import PartialModel
from strategies.placement_models.registry import register_placement, registered_placements
from strategies.placement_models.replicate import ReplicateModel
from strategies.placement_models.shard import ShardModel
from strategies.placement_models.strided_shard import StridedShardModel

for _model in (ShardModel(), ReplicateModel(), PartialModel(), StridedShardModel()):
    register_placement(_model)
BUILTIN_PLACEMENTS: tuple[str, ...] = registered_placements()
