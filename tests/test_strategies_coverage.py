"""Every feature the strategies promise is actually drawn (bounded, derandomized draws)."""

from __future__ import annotations

from collections import Counter

from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from strategies import (
    ALL_DTYPES,
    BUILTIN_PLACEMENTS,
    CONTAINER_KINDS,
    LAYOUTS,
    DictSpec,
    DTensorSpec,
    SeqSpec,
    ShardedTensorSpec,
    TensorSpec,
    UnsupportedSpec,
    chunk_bounds,
    dtensor_specs,
    iter_leaves,
    mesh_factorisations,
    mesh_shapes,
    model_optim_state_dicts,
    partial_reduce_ops,
    sharded_tensor_specs,
    split_over_mesh,
    state_dict_specs,
    tensor_specs,
    tree_depth,
)
from strategies.placements import has_uneven_strided_shard
from strategies.values import make_global_tensor

QUICK = settings(max_examples=300, derandomize=True, database=None, phases=[Phase.generate])


def collect(strategy, count: int = 300) -> list:
    drawn: list = []

    @settings(QUICK, max_examples=count, deadline=None)
    @given(strategy)
    def run(value) -> None:
        drawn.append(value)

    run()
    return drawn


def _containers(spec, out: Counter) -> None:
    if isinstance(spec, (DictSpec, SeqSpec)):
        out[spec.kind] += 1
        children = [c for _, c in spec.items] if isinstance(spec, DictSpec) else spec.items
        if isinstance(spec, DictSpec):
            out.update(f"{type(k).__name__} key" for k, _ in spec.items)
        if not spec.items:
            out["empty"] += 1
        for child in children:
            _containers(child, out)


def test_tensor_specs_reach_every_dtype_layout_and_edge_shape() -> None:
    specs = collect(tensor_specs(), 400)
    assert {s.dtype for s in specs} == set(ALL_DTYPES)
    assert {s.layout for s in specs} == set(LAYOUTS)
    assert any(s.ndim == 0 for s in specs) and any(0 in s.shape for s in specs)
    assert {s.per_rank for s in specs} == {True, False}


def test_mesh_shapes_reach_every_factorisation() -> None:
    for world_size, expected in ((4, 10), (8, 15)):
        shapes = mesh_factorisations(world_size)
        assert len(shapes) == len(set(shapes)) == expected
        assert set(collect(mesh_shapes(world_size), 200)) == set(shapes)
    assert (1, 4, 1) in mesh_factorisations(4) and (2, 2, 2) in mesh_factorisations(8)


def _local_lengths(spec: DTensorSpec) -> list[int]:
    tensor = make_global_tensor(spec.tensor, 0, ())
    parts = split_over_mesh(tensor, spec.mesh_shape, spec.placements, _gen())
    return [p.numel() for p in parts.values()]


def _gen():
    import torch

    return torch.Generator().manual_seed(0)


def test_dtensor_specs_reach_every_placement_and_shard_shape() -> None:
    specs = collect(dtensor_specs(4), 400)
    placements = [p for s in specs for p in s.placements]
    assert {p.kind for p in placements} >= set(BUILTIN_PLACEMENTS)
    ops = {p.param("reduce_op") for p in placements if p.kind == "partial"}
    assert ops == {"sum", "avg", "max", "min", "product", "band", "bor", "bxor"}
    assert any(p.param("split_factor", 1) > 1 for p in placements if p.kind == "strided_shard")
    sharded = [s for s in specs if any(p.kind == "shard" for p in s.placements)]
    assert any(0 in _local_lengths(s) and s.tensor.numel for s in sharded), "empty shard"
    assert any(len(set(_local_lengths(s))) > 1 for s in sharded), "uneven shards"
    assert {len(s.mesh_shape) for s in specs} == {1, 2, 3}


def test_partial_of_each_reduce_op_for_each_dtype_class() -> None:
    for dtype in ("bool", "int64", "bfloat16", "complex64"):
        last_op = partial_reduce_ops(dtype)[-1]
        spec = find(
            dtensor_specs(2, dtypes=(dtype,), kinds=("partial",)),
            lambda s, op=last_op: s.placements[0].param("reduce_op") == op,
            settings=settings(database=None, max_examples=500),
        )
        assert spec.tensor.dtype == dtype


def test_sharded_tensor_specs_reach_permuted_ranks_and_empty_chunks() -> None:
    specs = collect(sharded_tensor_specs(4), 200)
    assert any(s.rank_order != tuple(range(4)) for s in specs)
    assert any(s.rank_order == tuple(range(4)) for s in specs)
    held = [Counter(s.rank_order) for s in specs]
    assert any(max(c.values()) > 1 for c in held), "several chunks on one rank"
    assert any(len(c) < 4 for c in held), "a rank without chunks"
    assert {s.dim for s in specs} == {0, 1, 2}
    assert any(
        any(length == 0 for _, length in chunk_bounds(s.tensor.shape[s.dim], 4)) and s.tensor.shape[s.dim] > 0
        for s in specs
    )


def test_state_dict_specs_reach_every_container_leaf_and_depth() -> None:
    trees = collect(state_dict_specs(4, allow_unsupported=True), 300)
    containers: Counter = Counter()
    leaves: Counter = Counter()
    groups: Counter = Counter()
    for tree in trees:
        _containers(tree, containers)
        for _, leaf in iter_leaves(tree):
            leaves[type(leaf).__name__] += 1
            if isinstance(leaf, TensorSpec) and leaf.view_of:
                groups[(id(tree), leaf.view_of)] += 1
    assert set(CONTAINER_KINDS) <= set(containers)
    assert containers["int key"] and containers["str key"] and containers["empty"]
    assert max(tree_depth(t) for t in trees) >= 3
    assert {c.__name__ for c in (TensorSpec, DTensorSpec, ShardedTensorSpec, UnsupportedSpec)} <= set(leaves)
    assert {"ValueSpec", "BytesIOSpec"} <= set(leaves)
    assert max(groups.values()) >= 2, "a share group with two members"
    for tree in trees:
        meshes = {leaf.mesh_shape for _, leaf in iter_leaves(tree) if isinstance(leaf, DTensorSpec)}
        assert len(meshes) <= 1


def test_model_optim_state_dicts_look_like_adam() -> None:
    tree = collect(model_optim_state_dicts(8), 20)[-1]
    top = dict(tree.items)
    optim = dict(top["optim"].items)
    state = dict(optim["state"].items)
    assert all(isinstance(k, int) for k in state)
    assert {k for k, _ in state[0].items} == {"step", "exp_avg", "exp_avg_sq"}
    assert isinstance(optim["param_groups"], SeqSpec)


def test_unsupported_leaves_only_when_asked() -> None:
    trees = collect(state_dict_specs(2), 100)
    assert not any(isinstance(leaf, UnsupportedSpec) for t in trees for _, leaf in iter_leaves(t))


def test_leaf_strategy_override() -> None:
    leaf = st.just(TensorSpec((1,), "float32"))
    trees = collect(state_dict_specs(2, leaves=leaf, allow_views=False), 50)
    assert all(x == TensorSpec((1,), "float32") for t in trees for _, x in iter_leaves(t))


# ------------------------------------------------------------------ what the suite's cases reach

#: Keyword arguments with a default, per utility (CONTRACT signatures): each must be omitted
#: in a good share of the cases, so that a fork which changes a default fails.
DEFAULTED = {
    "gather_state_dict": ("cpu_offload", "ranks_only", "type_check", "pg"),
    "offload_state_dict_to_cpu": ("ranks_only", "type_check"),
    "copy_state_dict": ("non_blocking", "type_check"),
    "create_cpu_state_dict": ("pin_memory", "share_memory"),
    "broadcast_state_dict": ("strict", "cpu_offload", "pg"),
    "distribute_state_dict": ("pg",),
    "broadcast_tensors": ("pg",),
    "distribute_tensors": ("pg",),
    "all_gather_sharded_tensor": ("pg",),
}
NON_GLOO = {"int16", "uint16", "uint32", "uint64"}


def _leaves(case) -> list:
    return [
        leaf for spec in (case.state_dict, case.other) if spec is not None for _, leaf in iter_leaves(spec)
    ]


def _tensor_of(leaf):
    return leaf if isinstance(leaf, TensorSpec) else getattr(leaf, "tensor", None)


def _sides(d: DTensorSpec) -> list[int]:
    return [i for i, side in enumerate(d.mesh_shape) if side > 1]


def _not_a_pair(case) -> bool:
    entries = dict(case.state_dict.items)
    return any(not isinstance(entries.get(k), DTensorSpec) for k in case.kwarg("keys", ()))


SUBGROUP_UTILITIES = (
    "broadcast_state_dict",
    "broadcast_tensors",
    "all_gather_sharded_tensor",
    "gather_state_dict",
)
LOADING = ("broadcast_state_dict", "distribute_state_dict", "broadcast_tensors")
ONE_RANK_UTILITIES = ("offload_state_dict_to_cpu", "copy_state_dict", "flatten_state_dict")


def _local(case) -> list:
    return list(case.other.items) if case.other is not None else []


def _nd_full(case) -> bool:
    """Whether a load's full state dict holds a tensor with dims (plain or made a DTensor)."""
    return case.kwarg("pg") != "tail" and any(
        (t := _tensor_of(x)) is not None and bool(t.shape) for _, x in case.state_dict.items
    )


def _local_shape_mismatch(case, key, entry) -> bool:
    full = dict(case.state_dict.items).get(key)
    return (
        isinstance(entry, DTensorSpec) and isinstance(full, TensorSpec) and entry.tensor.shape != full.shape
    )


def _strided(d: DTensorSpec) -> list:
    return [(i, p) for i, p in enumerate(d.placements) if p.kind == "strided_shard"]


def _pairs(case) -> int:
    entries = dict(case.state_dict.items)
    return sum(isinstance(entries.get(k), DTensorSpec) for k in case.kwarg("keys", ()))


#: (feature, minimum rate, which cases count, which of those have it), over the cases of every
#: utility at world sizes 2 and 4, as the ci profile draws them.
FEATURES = (
    (
        "DTensor on a mesh with two sides > 1 (of 4-rank cases with DTensors)",
        0.30,
        lambda c, ds: c.world_size == 4 and bool(ds),
        lambda c, ds: any(len(_sides(d)) >= 2 for d in ds),
    ),
    (
        "... on exactly a 2x2 mesh",
        0.25,
        lambda c, ds: c.world_size == 4 and bool(ds),
        lambda c, ds: any(d.mesh_shape == (2, 2) for d in ds),
    ),
    (
        "... with different placements on those sides",
        0.15,
        lambda c, ds: c.world_size == 4 and bool(ds),
        lambda c, ds: any(len(_sides(d)) >= 2 and len({d.placements[i] for i in _sides(d)}) > 1 for d in ds),
    ),
    (
        "Partial product or bitwise op (of cases with Partial DTensors)",
        0.20,
        lambda c, ds: any(p.kind == "partial" for d in ds for p in d.placements),
        lambda c, ds: any(
            p.kind == "partial" and p.param("reduce_op") in ("product", "band", "bor", "bxor")
            for d in ds
            for p in d.placements
        ),
    ),
    (
        "a dtype gloo cannot carry (of cases with tensors)",
        0.05,  # about one tensor in eight of the trees; each such case is costly on torch
        lambda c, ds: any(_tensor_of(x) is not None for x in _leaves(c)),
        lambda c, ds: any((t := _tensor_of(x)) is not None and t.dtype in NON_GLOO for x in _leaves(c)),
    ),
    (
        "ShardedTensor with several chunks on a rank (of cases with ShardedTensors)",
        0.10,
        lambda c, ds: any(isinstance(x, ShardedTensorSpec) for x in _leaves(c)),
        lambda c, ds: any(
            isinstance(x, ShardedTensorSpec) and len(set(x.rank_order)) < len(x.rank_order)
            for x in _leaves(c)
        ),
    ),
    (
        "shared storage (of cases with 2+ plain tensors)",
        0.10,
        lambda c, ds: sum(isinstance(x, TensorSpec) for x in _leaves(c)) >= 2,
        lambda c, ds: any(isinstance(x, TensorSpec) and x.view_of for x in _leaves(c)),
    ),
    (
        "distribute_tensors key that is no (DTensor, full) pair (of its cases with keys)",
        0.30,
        lambda c, ds: c.utility == "distribute_tensors" and bool(c.kwarg("keys")),
        lambda c, ds: _not_a_pair(c),
    ),
    (
        "a subgroup pg without global rank 0 (of cases of the utilities taking a group rank 0)",
        0.15,
        lambda c, ds: c.utility in SUBGROUP_UTILITIES,
        lambda c, ds: c.kwarg("pg") == "tail",
    ),
    (
        "... gather_state_dict on it with a ShardedTensor (of gather_state_dict cases)",
        0.05,
        lambda c, ds: c.utility == "gather_state_dict",
        lambda c, ds: c.kwarg("pg") == "tail" and any(isinstance(x, ShardedTensorSpec) for x in _leaves(c)),
    ),
    (
        "uneven _StridedShard (of cases with _StridedShard DTensors)",
        0.20,
        lambda c, ds: any(_strided(d) for d in ds),
        lambda c, ds: any(has_uneven_strided_shard(d.tensor, d.mesh_shape, d.placements) for d in ds),
    ),
    (
        "a ShardedTensor destination of a load (of loading cases with a local tensor entry)",
        0.08,
        lambda c, ds: c.utility in LOADING and any(_tensor_of(x) is not None for _, x in _local(c)),
        lambda c, ds: any(isinstance(x, ShardedTensorSpec) for _, x in _local(c)),
    ),
    (
        "a local DTensor of another global shape than its full tensor (of loads with DTensor entries)",
        0.10,
        lambda c, ds: c.utility in LOADING and any(isinstance(x, DTensorSpec) for _, x in _local(c)),
        lambda c, ds: any(_local_shape_mismatch(c, k, x) for k, x in _local(c)),
    ),
    (
        "a DTensor in full_state_dict (of broadcast/distribute_state_dict cases with n-d full tensors)",
        0.04,
        lambda c, ds: c.utility in ("broadcast_state_dict", "distribute_state_dict") and _nd_full(c),
        lambda c, ds: any(isinstance(x, DTensorSpec) for _, x in c.state_dict.items),
    ),
    (
        "an unsupported leaf on one rank only (of local-utility cases with unsupported leaves)",
        0.15,
        lambda c, ds: (
            c.utility in ONE_RANK_UTILITIES and any(isinstance(x, UnsupportedSpec) for x in _leaves(c))
        ),
        lambda c, ds: any(isinstance(x, UnsupportedSpec) and len(x.ranks) == 1 for x in _leaves(c)),
    ),
    (
        "distribute_tensors pair whose full tensor has another shape (of its cases with pairs)",
        0.10,
        lambda c, ds: c.utility == "distribute_tensors" and _pairs(c) > 0,
        lambda c, ds: c.other is not None,
    ),
)
MIN_RATES = {name: rate for name, rate, _, _ in FEATURES}
OMITTED = "a keyword argument with a default omitted (of such arguments, all cases)"
MIN_RATES[OMITTED] = 0.35


def _case_features(cases) -> dict[str, tuple[int, int]]:
    """(hits, of) for each feature of MIN_RATES over ``cases``."""
    counts = {name: [0, 0] for name in MIN_RATES}
    for case in cases:
        dtensors = [leaf for leaf in _leaves(case) if isinstance(leaf, DTensorSpec)]
        for name, _, counted, has in FEATURES:
            if counted(case, dtensors):
                counts[name][1] += 1
                counts[name][0] += bool(has(case, dtensors))
        for argument in DEFAULTED.get(case.utility, ()):
            counts[OMITTED][1] += 1
            counts[OMITTED][0] += argument not in dict(case.kwargs)
    return {name: (hits, of) for name, (hits, of) in counts.items()}


def test_suite_cases_reach_each_feature_at_a_stated_rate(capsys) -> None:
    """The cases the suite draws (every utility, world sizes 2 and 4, as the ci profile
    does) reach each feature of MIN_RATES at least at its rate; prints the table."""
    from conformance.utilities import TABLE

    cases = [case for utility in TABLE for case in collect(utility.cases((2, 4)), 80)]
    rates = _case_features(cases)
    with capsys.disabled():
        print(f"\n{'feature':<84} {'rate':>6} {'min':>5}   hits/of")
        for name, (hits, of) in rates.items():
            print(f"{name:<84} {hits / max(of, 1):>6.2f} {MIN_RATES[name]:>5.2f}   {hits}/{of}")
    low = {
        name: f"{hits}/{of}" for name, (hits, of) in rates.items() if not of or hits / of < MIN_RATES[name]
    }
    assert not low, f"drawn below the stated rate: {low}"
