"""impl.copy_state_dict, impl.check_state_dict_similarity, impl.create_cpu_state_dict."""

from __future__ import annotations

import io
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor, Replicate, Shard

import impl
from conformance.world import context
from tests.builders import global_tensor, make_dtensor, make_sharded

SIZES = [2, 4]
Pair = namedtuple("Pair", ["first", "second"])
DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
]


def _upstream_state_dict() -> dict:
    buffer = io.BytesIO()
    torch.save(torch.ones(10), buffer)
    buffer.seek(0)
    return {
        "tensor1": torch.arange(10),
        "tensor2": torch.ones(10),
        "non_tensor_bytes_io": io.BytesIO(buffer.getvalue()),
        "non_tensor_bytes": buffer.getvalue(),
        "step": torch.tensor(7, dtype=torch.float),
        "lr": 1.5,
        "nested": {"list": [1, 2, 3, 4]},
    }


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


# ----------------------------------------------------------------- check_state_dict_similarity


def test_check_state_dict_similarity() -> None:
    base = {"a": torch.zeros(2, 3), "b": [torch.zeros(1, dtype=torch.int8), 1], "c": (2,)}
    same = {"a": torch.ones(2, 3), "b": [torch.ones(1, dtype=torch.int8), "other"], "c": (None,)}
    assert impl.check_state_dict_similarity(base, same) is True
    different = [
        {**base, "a": torch.zeros(3, 2)},
        {**base, "a": torch.zeros(2, 3, dtype=torch.float64)},
        {**base, "a": 1.0},
        {**base, "b": [torch.zeros(1, dtype=torch.int8)]},
        {**base, "b": (torch.zeros(1, dtype=torch.int8), 1)},
        {**base, "c": [2]},
        {**base, "c": 2},
        {"a": base["a"], "b": base["b"]},
        {**base, "extra": 1},
        {**base, "b": [1, torch.zeros(1, dtype=torch.int8)]},
    ]
    for other in different:
        assert impl.check_state_dict_similarity(base, other) is False, other
        assert impl.check_state_dict_similarity(other, base) is False, other
    assert impl.check_state_dict_similarity({}, {}) is True
    assert impl.check_state_dict_similarity(OrderedDict(a=1), {"a": 2}) is True


def test_check_state_dict_similarity_never_raises() -> None:
    class Exploding(dict):
        def __contains__(self, key: object) -> bool:
            raise RuntimeError("boom")

    odd_inputs = [None, 3, "s", {1, 2}, Exploding(a=1), [torch.zeros(1)]]
    for a in odd_inputs:
        for b in odd_inputs:
            assert isinstance(impl.check_state_dict_similarity(a, b), bool)


# ----------------------------------------------------------------- create_cpu_state_dict


def test_create_cpu_state_dict_plain() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state = {
        "dtypes": [global_tensor((2, 3), d) for d in DTYPES],
        "zero_d": torch.tensor(7.0),
        "empty": torch.empty(0, 3),
        "noncontig": base.t(),
        "views": [base[0], base[1:]],
        "pair": Pair(torch.ones(2), 1),
        "ordered": OrderedDict([("z", torch.ones(1)), ("a", "s")]),
        "tuple": (torch.ones(1),),
        "weird": {1, 2},
        "leaves": [1, 2.5, True, "s", b"b", io.BytesIO(b"x"), None],
    }
    out = impl.create_cpu_state_dict(state)
    assert impl.check_state_dict_similarity(state, out)
    tensors = [*out["dtypes"], out["zero_d"], out["empty"], out["noncontig"], *out["views"]]
    sources = [*state["dtypes"], state["zero_d"], state["empty"], state["noncontig"]]
    sources += state["views"]
    for got, src in zip(tensors, sources, strict=True):
        assert type(got) is torch.Tensor and got.device.type == "cpu"
        assert got.shape == src.shape and got.dtype == src.dtype and got.is_contiguous()
        assert got is not src
        if got.numel():
            assert _storage(got) != _storage(src)
    assert _storage(out["views"][0]) != _storage(out["views"][1])
    assert type(out["pair"]) is Pair and out["pair"].second == 1
    assert type(out["ordered"]) is OrderedDict and list(out["ordered"]) == ["z", "a"]
    assert type(out["tuple"]) is tuple
    assert out["weird"] == {1, 2} and out["weird"] is not state["weird"]
    assert all(a is b for a, b in zip(out["leaves"], state["leaves"], strict=True))


def test_create_cpu_state_dict_memory_options() -> None:
    state = {"t": torch.ones(3), "e": torch.empty(0), "z": torch.tensor(1)}
    shared = impl.create_cpu_state_dict(state, share_memory=True)
    assert all(t.is_shared() for t in shared.values())
    if torch.accelerator.is_available():
        pinned = impl.create_cpu_state_dict(state, pin_memory=True)
        assert pinned["t"].is_pinned()
    else:
        for share in (False, True):
            with pytest.raises(RuntimeError, match="pin_memory=True needs an accelerator"):
                impl.create_cpu_state_dict(state, pin_memory=True, share_memory=share)


# ----------------------------------------------------------------- copy_state_dict


def test_copy_state_dict_upstream_scenario() -> None:
    state = _upstream_state_dict()
    cpu = impl.create_cpu_state_dict(state)
    assert impl.check_state_dict_similarity(state, cpu)
    keep = cpu["tensor1"]
    cpu["tensor1"] = torch.arange(11)
    assert not impl.check_state_dict_similarity(state, cpu)
    cpu["tensor1"] = keep
    returned = impl.copy_state_dict(state, cpu)
    assert torch.equal(cpu["tensor1"], torch.arange(10))
    assert torch.equal(cpu["tensor2"], torch.ones(10))
    assert cpu["step"].item() == 7
    assert returned["tensor1"] is cpu["tensor1"] and returned["step"] is cpu["step"]
    assert returned["non_tensor_bytes_io"] is state["non_tensor_bytes_io"]
    assert returned["lr"] == 1.5 and returned["nested"] == {"list": [1, 2, 3, 4]}
    assert returned["non_tensor_bytes"] == state["non_tensor_bytes"]
    assert _storage(cpu["tensor1"]) != _storage(state["tensor1"])


def test_copy_state_dict_kinds_and_layouts() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    src = {
        "dtypes": [global_tensor((2, 3), d) for d in DTYPES],
        "noncontig": base.t(),
        "zero_d": torch.tensor(3),
        "empty": torch.empty(0, 2),
        "pair": Pair(torch.ones(2), "s"),
        "ordered": OrderedDict([("b", torch.ones(1)), ("a", 1)]),
    }
    dst = {
        "dtypes": [torch.zeros(2, 3, dtype=d) for d in DTYPES],
        "noncontig": torch.zeros(3, 4).t(),
        "zero_d": torch.tensor(0),
        "empty": torch.empty(0, 2),
        "pair": Pair(torch.zeros(2), "old"),
        "ordered": {"a": 0, "b": torch.zeros(1)},
    }
    returned = impl.copy_state_dict(src, dst)
    for got, want in zip(dst["dtypes"], src["dtypes"], strict=True):
        assert torch.equal(got, want)
    assert torch.equal(dst["noncontig"], src["noncontig"]) and dst["zero_d"].item() == 3
    assert type(returned["pair"]) is Pair and returned["pair"].second == "s"
    assert returned["pair"].first is dst["pair"].first
    assert type(returned["ordered"]) is OrderedDict and list(returned["ordered"]) == ["b", "a"]


def test_copy_state_dict_mismatch_leaves_destination_untouched() -> None:
    src = {"a": torch.ones(2), "b": [torch.ones(3), torch.ones(2, dtype=torch.int64)]}
    bad_destinations = [
        ({"a": torch.zeros(2), "b": [torch.zeros(3), torch.zeros(3, dtype=torch.int64)]}, "[1]"),
        ({"a": torch.zeros(2), "b": [torch.zeros(3), torch.zeros(2)]}, "dtype"),
        ({"a": torch.zeros(2), "b": [torch.zeros(3), 5]}, "['b'][1]"),
        ({"a": torch.zeros(2), "b": [torch.zeros(3)]}, "length"),
        ({"a": torch.zeros(2), "b": (torch.zeros(3), torch.zeros(2, dtype=torch.int64))}, "tuple"),
        ({"a": torch.zeros(2)}, "'b'"),
    ]
    for dst, fragment in bad_destinations:
        with pytest.raises(ValueError, match="copy_state_dict") as info:
            impl.copy_state_dict(src, dst)
        assert fragment in str(info.value)
        assert torch.equal(dst["a"], torch.zeros(2)), "destination written before the check"
    with pytest.raises(ValueError, match=r"unsupported value of type set at state_dict\['w'\]"):
        impl.copy_state_dict({"t": torch.ones(1), "w": {1}}, {"t": torch.zeros(1), "w": {1}})
    weird = {1}
    out = impl.copy_state_dict({"w": weird}, {"w": None}, type_check=False)
    assert out["w"] == weird and out["w"] is not weird


# ----------------------------------------------------------------- distributed tensor kinds


def job_cpu_state_dict_distributed() -> list[str]:
    n = context().world_size
    problems: list[str] = []
    src = {
        "shard": make_dtensor(global_tensor((n * 2 + 1, 3)), (n,), [Shard(0)]),
        "empty-local": make_dtensor(global_tensor((1, 2)), (n,), [Shard(0)]),
        "zero-d": make_dtensor(global_tensor(()), (n,), [Replicate()]),
        "2d": make_dtensor(global_tensor((4, 5)), (2, n // 2), [Shard(1), Shard(0)]),
        "st": make_sharded(global_tensor((3, n + 1)), 1, list(reversed(range(n)))),
        "st-one-owner": make_sharded(global_tensor((2, 2)), 0, [0]),
        "plain": torch.arange(4),
    }
    cpu = impl.create_cpu_state_dict(src, share_memory=True)
    if not impl.check_state_dict_similarity(src, cpu):
        problems.append("create_cpu_state_dict output not similar")
    for key, value in src.items():
        got = cpu[key]
        if got is value or type(got) is not type(value):
            problems.append(f"{key}: same object or other kind")
            continue
        if isinstance(value, DTensor):
            if got.placements != value.placements or got.device_mesh != value.device_mesh:
                problems.append(f"{key}: placements or mesh changed")
            if got.to_local().shape != value.to_local().shape or got.stride() != value.stride():
                problems.append(f"{key}: local shape or stride changed")
            locals_ = [(got.to_local(), value.to_local())]
        elif isinstance(value, ShardedTensor):
            got_meta = [(m.shard_offsets, m.shard_sizes) for m in got.metadata().shards_metadata]
            src_meta = [(m.shard_offsets, m.shard_sizes) for m in value.metadata().shards_metadata]
            if got_meta != src_meta:
                problems.append(f"{key}: shard metadata changed")
            locals_ = list(
                zip(
                    [s.tensor for s in got.local_shards()],
                    [s.tensor for s in value.local_shards()],
                    strict=True,
                )
            )
        else:
            locals_ = [(got, value)]
        for new, old in locals_:
            if new.numel() and _storage(new) == _storage(old):
                problems.append(f"{key}: aliases input storage")
            if new.numel() and not new.is_shared():
                problems.append(f"{key}: not in shared memory")
    returned = impl.copy_state_dict(src, cpu)
    for key, value in src.items():
        if returned[key] is not cpu[key]:
            problems.append(f"{key}: returned leaf is not the destination")
        if isinstance(value, DTensor) and not torch.equal(cpu[key].to_local(), value.to_local()):
            problems.append(f"{key}: local values not copied")
        if isinstance(value, ShardedTensor):
            for a, b in zip(cpu[key].local_shards(), value.local_shards(), strict=True):
                if not torch.equal(a.tensor, b.tensor):
                    problems.append(f"{key}: shard not copied")
    other_shape = make_dtensor(global_tensor((n * 2, 3)), (n,), [Shard(0)])
    if impl.check_state_dict_similarity({"d": src["shard"]}, {"d": other_shape}):
        problems.append("DTensors of different global shapes considered similar")
    other_layout = make_sharded(global_tensor((3, n + 1)), 1, list(range(n)))
    if not impl.check_state_dict_similarity({"s": src["st"]}, {"s": other_layout}):
        problems.append("ShardedTensors of the same global shape considered different")
    try:
        # Reversed owners: no rank holds the same piece in both, so every rank raises.
        impl.copy_state_dict({"s": src["st"]}, {"s": other_layout})
        problems.append("ShardedTensor with another local layout copied")
    except ValueError as exc:
        if "local shards" not in str(exc):
            problems.append(f"shard layout message: {exc}")
    # A DTensor where the destination holds a plain tensor of the same global shape.
    mismatched = {"shard": torch.zeros(n * 2 + 1, 3)}
    if impl.check_state_dict_similarity({"shard": src["shard"]}, mismatched):
        problems.append("DTensor vs Tensor considered similar")
    try:
        impl.copy_state_dict({"shard": src["shard"]}, mismatched)
        problems.append("DTensor into Tensor copied")
    except ValueError as exc:
        if "state_dict['shard']" not in str(exc):
            problems.append(f"message lacks path: {exc}")
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_create_cpu_and_copy_distributed(world_factory, size) -> None:
    assert world_factory(size).run(job_cpu_state_dict_distributed) == [[]] * size
