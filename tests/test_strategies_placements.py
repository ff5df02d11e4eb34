"""Placement models: split/join round trip, distinct Partial contributions, registry."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    ALL_DTYPES,
    BUILTIN_PLACEMENTS,
    DTensorSpec,
    PlacementSpec,
    TensorSpec,
    dtensor_specs,
    get_placement_model,
    join_over_mesh,
    load_placement,
    register_placement,
    registered_placements,
    split_over_mesh,
    unregister_placement,
)
from strategies.placements import coordinate_of
from strategies.values import make_global_tensor


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = torch.view_as_real(t) if t.is_complex() else t
    return t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t


def assert_close(joined: torch.Tensor, tensor: torch.Tensor, spec: DTensorSpec) -> None:
    __tracebackhide__ = True
    assert joined.shape == tensor.shape and joined.dtype == tensor.dtype, spec
    averaged = any(p.param("reduce_op") == "avg" for p in spec.placements)
    if averaged and tensor.dtype in (torch.bfloat16, torch.float16, torch.complex64):
        a, b = _as_real(joined).double(), _as_real(tensor).double()
        assert torch.allclose(a, b, rtol=1e-2, equal_nan=True), spec
    else:
        assert _same_bits_or_both_nan(joined, tensor), f"{spec}: {joined} vs {tensor}"


def _same_bits_or_both_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, except that any NaN matches any NaN (payloads may differ)."""
    a, b = _as_real(a), _as_real(b)
    if a.is_floating_point():
        nan = a.isnan()
        if not torch.equal(nan, b.isnan()):
            return False
        a, b = a[~nan], b[~nan]
    return torch.equal(_bits(a), _bits(b))


def _as_real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


@settings(max_examples=150, deadline=None)
@given(dtensor_specs(8, dtypes=ALL_DTYPES, kinds=BUILTIN_PLACEMENTS), st.integers(0, 3))
def test_split_then_join_gives_the_tensor_back(spec: DTensorSpec, seed: int) -> None:
    tensor = make_global_tensor(spec.tensor, seed, ("p",))
    gen = torch.Generator().manual_seed(seed)
    parts = split_over_mesh(tensor, spec.mesh_shape, spec.placements, gen)
    assert len(parts) == 8
    assert {coordinate_of(r, spec.mesh_shape) for r in range(8)} == set(parts)
    assert_close(join_over_mesh(parts, spec.mesh_shape, spec.placements), tensor, spec)


@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8", "bfloat16", "bool", "complex64"])
def test_partial_contributions_differ_per_index(dtype: str) -> None:
    model = get_placement_model("partial")
    tensor = make_global_tensor(TensorSpec((6, 5), dtype), 1, ("x",))
    for op in ("sum", "avg", "max", "min", "product", "band", "bor", "bxor"):
        spec = PlacementSpec("partial", (("reduce_op", op),))
        if model.placements(TensorSpec((6, 5), dtype), (4,), 0, ()) is None:
            continue
        from strategies import partial_reduce_ops

        if op not in partial_reduce_ops(dtype):
            continue
        parts = model.split(tensor, 4, spec, torch.Generator().manual_seed(0))
        distinct = {bytes(_bits(p).flatten().tolist()) for p in parts}
        assert len(distinct) == 4, (dtype, op)


def test_shard_follows_chunk_with_empty_tail() -> None:
    model = get_placement_model("shard")
    parts = model.split(torch.arange(5), 4, PlacementSpec("shard", (("dim", 0),)), None)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4], []]


def test_strided_shard_matches_torch_docstring_example() -> None:
    # torch's _StridedShard doc: [_StridedShard(0, sf=2), Shard(0)] on a 2x2 mesh puts row
    # blocks 0, 2, 1, 3 on ranks 0..3
    tensor = torch.arange(8).repeat_interleave(2).view(8, 2)
    placements = (
        PlacementSpec("strided_shard", (("dim", 0), ("split_factor", 2))),
        PlacementSpec("shard", (("dim", 0),)),
    )
    parts = split_over_mesh(tensor, (2, 2), placements, torch.Generator())
    rows = [parts[coordinate_of(r, (2, 2))][:, 0].tolist() for r in range(4)]
    assert rows == [[0, 1], [4, 5], [2, 3], [6, 7]]


def test_plugin_placement_by_module_path_becomes_drawable() -> None:
    assert "even_shard" not in registered_placements()
    model = load_placement("tests.example_placement:EvenShard")
    try:
        assert get_placement_model("even_shard") is model
        assert "even_shard" in registered_placements()
        seen = []

        @settings(max_examples=100, deadline=None, database=None)
        @given(dtensor_specs(4, kinds=("even_shard",), min_dims=1))
        def draw(spec: DTensorSpec) -> None:
            tensor = make_global_tensor(spec.tensor, 0, ())
            parts = split_over_mesh(tensor, spec.mesh_shape, spec.placements, torch.Generator())
            assert _same_bits_or_both_nan(join_over_mesh(parts, spec.mesh_shape, spec.placements), tensor)
            seen.extend(p.kind for p in spec.placements)

        draw()
        assert "even_shard" in seen
        assert model.to_torch(PlacementSpec("even_shard", (("dim", 1),))).dim == 1
    finally:
        unregister_placement("even_shard")


def test_registry_rejects_bad_models_and_names() -> None:
    with pytest.raises(TypeError):
        register_placement(object())
    with pytest.raises(ValueError):
        register_placement(type(get_placement_model("shard"))())
    with pytest.raises(KeyError, match="registered"):
        get_placement_model("nope")
    with pytest.raises(ValueError):
        load_placement("no_colon_here")
