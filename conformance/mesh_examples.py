"""Explicit cases on a 2x2 mesh, one set per utility and law: every suite property runs them
before its drawn cases (issue 10: a layout bug that shows only when two mesh dims are larger
than 1 must fail the suite whatever the draws).

Each DTensor below sits on the 4-rank mesh ``(2, 2)`` with different placements on its two
mesh dims (Shard/Replicate, Replicate/Shard, two Shards of different tensor dims, a
``_StridedShard`` paired with ``Shard`` as FSDP over TP builds it, Partial with Shard), with
uneven sides so that pieces differ in length between ranks.
"""

from __future__ import annotations

from conformance.case import Case
from conformance.utilities import UTILITY
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    PlacementSpec,
    ShardedTensorSpec,
    Spec,
    TensorSpec,
    ValueSpec,
)

WORLD_SIZE = 4
MESH = (2, 2)
SEED = 20261129


def _shard(dim: int) -> PlacementSpec:
    return PlacementSpec("shard", (("dim", dim),))


REPLICATE = PlacementSpec("replicate")
STRIDED = PlacementSpec("strided_shard", (("dim", 0), ("split_factor", 2)))
PARTIAL_SUM = PlacementSpec("partial", (("reduce_op", "sum"),))

#: (name, global tensor, placements on the 2x2 mesh): asymmetric on every entry.
LAYOUTS: tuple[tuple[str, TensorSpec, tuple[PlacementSpec, ...]], ...] = (
    ("w", TensorSpec((5, 3), "float32"), (_shard(0), REPLICATE)),
    ("b", TensorSpec((3, 7), "float32"), (REPLICATE, _shard(1))),
    ("emb", TensorSpec((5, 6), "bfloat16"), (_shard(1), _shard(0))),
    ("fsdp_tp", TensorSpec((8, 2), "float64"), (STRIDED, _shard(0))),
    ("partial", TensorSpec((3, 4), "int64"), (PARTIAL_SUM, _shard(1))),
)


def _dtensors() -> tuple[tuple[str, Spec], ...]:
    return tuple((name, DTensorSpec(tensor, MESH, placements)) for name, tensor, placements in LAYOUTS)


def _tree() -> DictSpec:
    """A nested state dict: the DTensors under "model", a plain tensor and a value beside."""
    return DictSpec(
        (
            ("model", DictSpec(_dtensors())),
            ("buffer", TensorSpec((2, 3), "float32", per_rank=True)),
            ("step", ValueSpec(3)),
        )
    )


def _full() -> DictSpec:
    """The flat full state dict the loading utilities take: each layout's global tensor."""
    return DictSpec(tuple((name, tensor) for name, tensor, _ in LAYOUTS))


def _local() -> DictSpec:
    """The local state dict the full one loads into: the DTensors, flat."""
    return DictSpec(_dtensors())


def examples(utility: str) -> list[Case]:
    """The 2x2 cases of ``utility`` (or ``law:<name>``); keyword arguments left to the
    property, which forces its own."""
    if utility in LAW_EXAMPLES:
        return [
            Case(utility, c.world_size, c.seed, c.state_dict, c.other)
            for c in examples(LAW_EXAMPLES[utility])
        ]
    tree, full, local = _tree(), _full(), _local()
    names = tuple(name for name, _, _ in LAYOUTS)
    sharded = ShardedTensorSpec(TensorSpec((7, 3), "float32"), 0, (2, 0, 3, 1))
    by_form = {  # the utility table's ``example``: the arguments the utility takes
        "tree": (tree, None, ()),
        "two_trees": (tree, tree, ()),
        "full_local": (full, local, ()),
        "full_local_keys": (full, local, (("keys", names),)),
        "local_keys": (local, None, (("keys", names),)),
        "sharded": (sharded, None, ()),
    }
    spec, other, kwargs = by_form[UTILITY[utility].example]
    return [Case(utility, WORLD_SIZE, SEED, spec, other=other, kwargs=kwargs)]


#: The utility whose example each law runs on.
LAW_EXAMPLES = {
    "law:offload_after_gather": "offload_state_dict_to_cpu",
    "law:copy_into_cpu_copy": "create_cpu_state_dict",
    "law:flatten_roundtrip": "unflatten_state_dict",
    "law:broadcast_is_distribute": "broadcast_state_dict",
}
