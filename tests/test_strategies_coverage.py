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
    assert ops == {"sum", "avg", "max", "min"}
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

#: Minimum rates of each drawn feature in the cases of the suite's utilities (world sizes 2, 4).
MIN_RATES = {
    "DTensor on a mesh with two sides > 1 (of 4-rank cases with DTensors)": 0.30,
    "... with different placements on those sides": 0.15,
    "shared storage (of cases with 2+ plain tensors)": 0.10,
}


def _case_features(cases) -> dict[str, tuple[int, int]]:
    """(hits, of) for each feature of MIN_RATES over ``cases``."""
    counts = {name: [0, 0] for name in MIN_RATES}
    for case in cases:
        leaves = [
            leaf
            for spec in (case.state_dict, case.other)
            if spec is not None
            for _, leaf in iter_leaves(spec)
        ]
        dtensors = [leaf for leaf in leaves if isinstance(leaf, DTensorSpec)]
        if case.world_size == 4 and dtensors:
            multi = [d for d in dtensors if sum(side > 1 for side in d.mesh_shape) >= 2]
            counts["DTensor on a mesh with two sides > 1 (of 4-rank cases with DTensors)"][1] += 1
            counts["DTensor on a mesh with two sides > 1 (of 4-rank cases with DTensors)"][0] += bool(multi)
            asymmetric = any(
                len({d.placements[i] for i, side in enumerate(d.mesh_shape) if side > 1}) > 1 for d in multi
            )
            counts["... with different placements on those sides"][1] += 1
            counts["... with different placements on those sides"][0] += asymmetric
        plain = [leaf for leaf in leaves if isinstance(leaf, TensorSpec)]
        if len(plain) >= 2:
            counts["shared storage (of cases with 2+ plain tensors)"][1] += 1
            counts["shared storage (of cases with 2+ plain tensors)"][0] += any(t.view_of for t in plain)
    return {name: (hits, of) for name, (hits, of) in counts.items()}


def test_suite_cases_reach_each_feature_at_a_stated_rate(capsys) -> None:
    """The cases the suite draws (every utility, world sizes 2 and 4, as the ci profile
    does) reach each feature of MIN_RATES at least at its rate; prints the table."""
    from conformance.case_strategies import CASES

    cases = [case for utility in CASES for case in collect(CASES[utility]((2, 4)), 40)]
    rates = _case_features(cases)
    with capsys.disabled():
        print(f"\n{'feature':<72} {'rate':>6} {'min':>5}   hits/of")
        for name, (hits, of) in rates.items():
            print(f"{name:<72} {hits / max(of, 1):>6.2f} {MIN_RATES[name]:>5.2f}   {hits}/{of}")
    low = {
        name: f"{hits}/{of}" for name, (hits, of) in rates.items() if not of or hits / of < MIN_RATES[name]
    }
    assert not low, f"drawn below the stated rate: {low}"
