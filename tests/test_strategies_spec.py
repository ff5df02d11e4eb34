"""Spec types: JSON round trip, paths, values, layouts and share groups."""

from __future__ import annotations

import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    ALL_DTYPES,
    DictSpec,
    SeqSpec,
    TensorSpec,
    ValueSpec,
    chunk_bounds,
    format_path,
    iter_leaves,
    make_global_tensor,
    make_plain_tensor,
    model_optim_state_dicts,
    share_group_footprints,
    spec_from_json,
    spec_to_json,
    state_dict_specs,
)


def _dump(spec) -> str:
    return json.dumps(spec_to_json(spec), allow_nan=False, sort_keys=True)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        state_dict_specs(4, allow_unsupported=True),
        model_optim_state_dicts(8),
    )
)
def test_specs_survive_json_round_trip(spec) -> None:
    text = _dump(spec)
    back = spec_from_json(json.loads(text))
    assert _dump(back) == text
    assert [p for p, _ in iter_leaves(back)] == [p for p, _ in iter_leaves(spec)]


def test_json_keeps_types_that_equality_hides() -> None:
    spec = DictSpec(
        (
            (0, ValueSpec(-0.0)),
            ("0", ValueSpec(float("nan"))),
            (1, ValueSpec(True)),
            (2, ValueSpec(b"\x00\xff")),
            (3, SeqSpec((ValueSpec(1), ValueSpec(1.0)), "tuple")),
        ),
        "ordered_dict",
    )
    back = spec_from_json(json.loads(_dump(spec)))
    keys = [k for k, _ in back.items]
    assert keys == [0, "0", 1, 2, 3] and type(keys[0]) is int and type(keys[1]) is str
    values = dict(back.items)
    assert str(values[0].value) == "-0.0" and values["0"].value != values["0"].value
    assert values[1].value is True and values[2].value == b"\x00\xff"
    assert [type(v.value) for v in values[3].items] == [int, float]
    assert back.kind == "ordered_dict" and values[3].kind == "tuple"


def test_format_path() -> None:
    assert format_path(("optim", "state", 0, "exp_avg")) == ("state_dict['optim']['state'][0]['exp_avg']")
    assert format_path(()) == "state_dict"


@given(st.integers(0, 12), st.integers(1, 8))
def test_chunk_bounds_follow_torch_chunk(size: int, chunks: int) -> None:
    pieces = torch.chunk(torch.arange(size), chunks) if size else ()
    expected = [len(p) for p in pieces] + [0] * (chunks - len(pieces))
    assert [length for _, length in chunk_bounds(size, chunks)] == expected
    assert sum(length for _, length in chunk_bounds(size, chunks)) == size


def test_values_are_deterministic_distinct_and_special() -> None:
    for dtype in ALL_DTYPES:
        spec = TensorSpec((4, 3), dtype)
        a = make_global_tensor(spec, 7, ("w",))
        assert a.shape == (4, 3) and a.dtype == getattr(torch, dtype)
        assert torch.equal(a.view(torch.uint8), make_global_tensor(spec, 7, ("w",)).view(torch.uint8))
        if dtype == "bool":
            assert a.any() and not a.all()
            continue
        flat = [repr(x) for x in a.flatten().tolist()]
        assert len(set(flat)) == len(flat), dtype
        if a.is_floating_point() or a.is_complex():
            real = (a.real if a.is_complex() else a).float()  # float8 has no signbit kernel
            has_negative_zero = bool(torch.signbit(torch.tensor(-0.0).to(a.dtype).float()))
            assert real.isnan().any()
            assert (torch.signbit(real) & (real == 0)).any() == has_negative_zero, dtype
    per_rank = TensorSpec((3,), "float32", per_rank=True)
    assert not torch.equal(
        make_global_tensor(per_rank, 0, ("x",), 0), make_global_tensor(per_rank, 0, ("x",), 1)
    )


def test_layouts_and_share_groups() -> None:
    leaves = [
        (("a",), TensorSpec((2, 3), "float32", "transposed", view_of="g")),
        (("b",), TensorSpec((2, 3), "float32", "transposed", view_of="g")),
        (("c",), TensorSpec((4,), "float32", "strided", view_of="g")),
        (("d",), TensorSpec((2,), "float32", "offset_view")),
    ]
    footprints = share_group_footprints(leaves)
    storages: dict = {}
    made = {}
    for path, spec in leaves:
        key = ("view_of", spec.view_of) if spec.view_of else ("path", path)
        made[path[0]] = make_plain_tensor(spec, 3, path, 0, storages, footprints[key])
    assert not made["a"].is_contiguous() and made["a"].shape == (2, 3)
    assert made["c"].stride() == (2,) and made["d"].storage_offset() == 1
    ptr = made["a"].untyped_storage().data_ptr()
    assert made["b"].untyped_storage().data_ptr() == ptr == made["c"].untyped_storage().data_ptr()
    assert made["a"] is not made["b"] and torch.equal(made["a"].nan_to_num(), made["b"].nan_to_num())
    assert made["d"].untyped_storage().data_ptr() != ptr


def test_a_leaf_held_by_some_ranks_is_none_on_the_others_and_round_trips() -> None:
    from strategies.spec import UnsupportedSpec, ValueSpec, on_rank, spec_from_json, spec_to_json

    tree = DictSpec((("a", UnsupportedSpec("set", ranks=(1,))), ("b", UnsupportedSpec("object"))))
    assert on_rank(tree, 1) == tree
    assert on_rank(tree, 0) == DictSpec((("a", ValueSpec(None)), ("b", UnsupportedSpec("object"))))
    assert spec_from_json(json.loads(json.dumps(spec_to_json(tree)))) == tree
