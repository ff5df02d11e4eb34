"""Rank replies travel bit-exact: every dtype, empty and 0-d tensors, NaN payloads, -0.0."""

from __future__ import annotations

import pickle

import pytest
import torch

from conformance import wire

DTYPES = [
    getattr(torch, name)
    for name in (
        "float32",
        "float64",
        "float16",
        "bfloat16",
        "complex64",
        "complex128",
        "bool",
        "int8",
        "uint8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "uint64",
        "float8_e4m3fn",
        "float8_e5m2",
    )
    if hasattr(torch, name)
]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 4), (2, 0, 3)], ids=str)
def test_a_contiguous_tensor_arrives_with_the_same_bits(dtype, shape) -> None:
    sent = torch.arange(max(1, torch.Size(shape).numel()), dtype=torch.int64)[: torch.Size(shape).numel()]
    sent = (sent % 7).to(dtype).reshape(shape)
    got = pickle.loads(wire.dumps({"x": sent}))["x"]
    assert (got.dtype, got.shape) == (sent.dtype, sent.shape)
    assert torch.equal(_bits(got), _bits(sent))


def test_special_floats_keep_their_bits_and_other_layouts_keep_their_strides() -> None:
    specials = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")])
    assert torch.equal(pickle.loads(wire.dumps(specials)).view(torch.int32), specials.view(torch.int32))
    transposed = torch.arange(6.0).reshape(2, 3).t()  # not contiguous: torch's own pickling
    got = pickle.loads(wire.dumps(transposed))
    assert got.stride() == transposed.stride() and torch.equal(got, transposed)
    wide = torch.arange(6, dtype=torch.int64).to(torch.uint16).reshape(2, 3).t()
    got = pickle.loads(wire.dumps(wide))
    assert (
        got.dtype == torch.uint16
        and got.stride() == wide.stride()
        and torch.equal(got.to(torch.int64), wide.to(torch.int64))
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.int32, torch.complex64], ids=str)
def test_a_contiguous_tensor_with_odd_strides_on_size_one_dims_arrives(dtype) -> None:
    """Contiguous, yet ``reshape(-1)`` keeps a stride other than 1 (a size-1 dim's stride is free)."""
    base = torch.arange(12).to(dtype)
    for sent in (base[2:3].as_strided((1,), (2,)), base.as_strided((3, 1), (1, 5), 4), base[5:5]):
        assert sent.is_contiguous()
        got = pickle.loads(wire.dumps(sent))
        assert got.shape == sent.shape and torch.equal(got, sent)


def test_an_arriving_tensor_owns_its_memory() -> None:
    got = pickle.loads(wire.dumps(torch.zeros(3)))
    got += 1  # writable, not a view of a read-only buffer
    assert got.tolist() == [1.0, 1.0, 1.0]
