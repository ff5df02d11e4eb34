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
    tree, full, local = _tree(), _full(), _local()
    names = tuple(name for name, _, _ in LAYOUTS)
    by_utility: dict[str, list[Case]] = {
        "gather_state_dict": [Case("gather_state_dict", WORLD_SIZE, SEED, tree)],
        "offload_state_dict_to_cpu": [Case("offload_state_dict_to_cpu", WORLD_SIZE, SEED, tree)],
        "copy_state_dict": [Case("copy_state_dict", WORLD_SIZE, SEED, tree, other=tree)],
        "create_cpu_state_dict": [Case("create_cpu_state_dict", WORLD_SIZE, SEED, tree)],
        "check_state_dict_similarity": [
            Case("check_state_dict_similarity", WORLD_SIZE, SEED, tree, other=tree)
        ],
        "flatten_state_dict": [Case("flatten_state_dict", WORLD_SIZE, SEED, tree)],
        "unflatten_state_dict": [Case("unflatten_state_dict", WORLD_SIZE, SEED, tree)],
        "broadcast_state_dict": [Case("broadcast_state_dict", WORLD_SIZE, SEED, full, other=local)],
        "distribute_state_dict": [Case("distribute_state_dict", WORLD_SIZE, SEED, full, other=local)],
        "broadcast_tensors": [
            Case("broadcast_tensors", WORLD_SIZE, SEED, full, other=local, kwargs=(("keys", names),))
        ],
        "distribute_tensors": [
            Case("distribute_tensors", WORLD_SIZE, SEED, local, kwargs=(("keys", names),))
        ],
        "all_gather_sharded_tensor": [
            Case(
                "all_gather_sharded_tensor",
                WORLD_SIZE,
                SEED,
                ShardedTensorSpec(TensorSpec((7, 3), "float32"), 0, (2, 0, 3, 1)),
            )
        ],
    }
    laws = {
        "law:offload_after_gather": "offload_state_dict_to_cpu",
        "law:copy_into_cpu_copy": "create_cpu_state_dict",
        "law:flatten_roundtrip": "unflatten_state_dict",
        "law:broadcast_is_distribute": "broadcast_state_dict",
    }
    if utility in laws:
        return [Case(utility, c.world_size, c.seed, c.state_dict, c.other) for c in by_utility[laws[utility]]]
    return by_utility[utility]
