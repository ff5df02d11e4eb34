"""impl.gather_state_dict, impl.all_gather_sharded_tensor, impl.offload_state_dict_to_cpu."""

from __future__ import annotations

import io
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard

import impl
from conformance.world import JobFailed, context
from tests.builders import global_tensor, make_dtensor, make_partial, make_sharded

SIZES = [2, 4]
Pair = namedtuple("Pair", ["first", "second"])
ALL_DTYPES = [
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
]


def _expect_equal(problems: list[str], label: str, got: object, want: torch.Tensor) -> None:
    if not isinstance(got, torch.Tensor) or isinstance(got, DTensor):
        problems.append(f"{label}: got {type(got).__name__}, expected a plain tensor")
    elif got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
        problems.append(f"{label}: {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)}")
    elif not torch.equal(got.cpu(), want):
        problems.append(f"{label}: values differ")


def _dtensor_cases(n: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...], list]]:
    """(label, global shape, mesh shape, placements)."""
    two = (2, n // 2)
    return [
        ("shard0", (n * 2, 3), (n,), [Shard(0)]),
        ("shard1", (3, n * 2), (n,), [Shard(1)]),
        ("uneven", (n + 1, 3), (n,), [Shard(0)]),
        ("empty-shards", (1, 2), (n,), [Shard(0)]),
        ("empty-tensor", (0, 3), (n,), [Shard(0)]),
        ("replicate", (4,), (n,), [Replicate()]),
        ("0-d", (), (n,), [Replicate()]),
        ("2d-shard-shard", (5, 7), two, [Shard(0), Shard(1)]),
        ("2d-hsdp", (5, 3), two, [Replicate(), Shard(0)]),
        ("2d-same-dim", (9, 2), two, [Shard(0), Shard(0)]),
        ("2d-strided", (n * 4, 3), two, [_StridedShard(0, split_factor=n // 2), Shard(0)]),
        ("3d", (4, 5, 3), (2, n // 2, 1), [Shard(0), Replicate(), Shard(2)]),
    ]


def job_gather_dtensors() -> list[str]:
    n = context().world_size
    problems: list[str] = []
    state, expected = {}, {}
    for label, shape, mesh_shape, placements in _dtensor_cases(n):
        full = global_tensor(shape)
        state[label], expected[label] = make_dtensor(full, mesh_shape, placements), full
    for dtype in ALL_DTYPES:
        full = global_tensor((n + 1, 2), dtype)
        state[str(dtype)], expected[str(dtype)] = make_dtensor(full, (n,), [Shard(0)]), full
    for op in ("sum", "avg", "max", "min"):
        state[op], expected[op] = make_partial(global_tensor((3, 2), torch.float64), op)
    for op in ("sum", "max"):
        state[f"int16-{op}"], expected[f"int16-{op}"] = make_partial(global_tensor((3,), torch.int16), op)
    # 2-D mesh mixing Partial and Shard: coordinate 0 on the Partial dim holds the pieces.
    full = global_tensor((5, 4))
    two = make_dtensor(full, (2, n // 2), [Replicate(), Shard(0)])
    local = two.to_local() if two.device_mesh.get_coordinate()[0] == 0 else two.to_local() * 0
    state["2d-partial"] = DTensor.from_local(
        local,
        two.device_mesh,
        [Partial("sum"), Shard(0)],
        run_check=False,
        shape=full.shape,
        stride=full.stride(),
    )
    expected["2d-partial"] = full
    snapshot = {k: v.to_local().clone() for k, v in state.items()}
    out = impl.gather_state_dict(state)
    for key, value in state.items():
        if not torch.equal(value.to_local(), snapshot[key]):
            problems.append(f"{key}: input local tensor changed")
    for key, want in expected.items():
        _expect_equal(problems, key, out[key], want)
        local = state[key].to_local()
        if local.numel() and out[key].untyped_storage().data_ptr() == (local.untyped_storage().data_ptr()):
            problems.append(f"{key}: output aliases the DTensor's local tensor")
    if list(out) != list(state):
        problems.append("key order changed")
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_gather_state_dict_dtensor(world_factory, size) -> None:
    assert world_factory(size).run(job_gather_dtensors) == [[]] * size


def job_gather_tree() -> list[str]:
    """Upstream's 'complicated dict' plus every container kind and non-tensor leaf."""
    n = context().world_size
    problems: list[str] = []
    full = global_tensor((n * 3, 3, 3))
    dt = make_dtensor(full, (n,), [Shard(0)])
    ones = torch.ones(10)
    buffer = io.BytesIO(b"abc")
    state = {
        "local": dt,
        "list": [dt, ones] * 3,
        "arange": torch.arange(10),
        "tuple": (dt, 1),
        "pair": Pair(dt, "s"),
        "ordered": OrderedDict([("z", dt), ("a", 2.5)]),
        "leaves": [1, 2.5, True, "s", b"b", buffer, None],
        "empty": [{}, [], ()],
        3: {"int-key": dt},
    }
    out = impl.gather_state_dict(state)
    _expect_equal(problems, "local", out["local"], full)
    for i, item in enumerate(out["list"]):
        _expect_equal(problems, f"list[{i}]", item, full if i % 2 == 0 else ones)
    if out["arange"] is not state["arange"]:
        problems.append("plain CPU tensor was copied")
    checks = [
        (type(out["tuple"]) is tuple, "tuple kind"),
        (type(out["pair"]) is Pair and out["pair"].second == "s", "namedtuple kind"),
        (type(out["ordered"]) is OrderedDict and list(out["ordered"]) == ["z", "a"], "ordered"),
        (all(a is b for a, b in zip(out["leaves"], state["leaves"], strict=True)), "leaves"),
        (out["empty"] == [{}, [], ()] and type(out["empty"][2]) is tuple, "empty containers"),
    ]
    problems += [label for ok, label in checks if not ok]
    _expect_equal(problems, "int key", out[3]["int-key"], full)
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_gather_state_dict_containers(world_factory, size) -> None:
    assert world_factory(size).run(job_gather_tree) == [[]] * size


def job_gather_ranks_only(ranks_only: tuple[int, ...]) -> object:
    n = context().world_size
    full = global_tensor((n, 4))
    dt = make_dtensor(full, (n,), [Shard(0)])
    st = make_sharded(full, 1, list(range(n)))
    out = impl.gather_state_dict({"d": dt, "s": st}, cpu_offload=True, ranks_only=ranks_only)
    listed = impl.gather_state_dict([dt], ranks_only=ranks_only)
    return out, listed, full


@pytest.mark.parametrize("size", SIZES)
def test_gather_state_dict_ranks_only(world_factory, size) -> None:
    ranks_only = (0, 2) if size == 4 else (1,)
    results = world_factory(size).run(job_gather_ranks_only, ranks_only)
    for rank, (out, listed, full) in enumerate(results):
        if rank in ranks_only:
            assert torch.equal(out["d"], full) and torch.equal(out["s"], full)
            assert out["d"].device.type == "cpu"
            assert torch.equal(listed[0], full)
        else:
            assert out == {} and type(out) is dict
            assert listed is None


def job_type_check(type_check: bool) -> object:
    dt = make_dtensor(global_tensor((4,)), (context().world_size,), [Shard(0)])
    weird = {1, 2}
    out = impl.gather_state_dict({"d": dt, "a": [weird]}, type_check=type_check)
    return out["a"][0] == weird and out["a"][0] is not weird


@pytest.mark.parametrize("size", SIZES)
def test_gather_state_dict_type_check(world_factory, size) -> None:
    world = world_factory(size)
    with pytest.raises(JobFailed) as info:
        world.run(job_type_check, True)
    failures = info.value.failures
    assert sorted(failures) == list(range(size))
    for failure in failures.values():
        assert failure.type_name == "ValueError"
        assert "unsupported value of type set at state_dict['a'][0]" in failure.message
        assert "type_check=False" in failure.message
    assert world.run(job_type_check, False) == [True] * size


def job_all_gather_sharded() -> list[str]:
    n = context().world_size
    problems: list[str] = []
    cases = [
        ("dim0-in-order", (n * 2, 3), 0, list(range(n))),
        ("dim0-reversed", (n + 1, 3), 0, list(reversed(range(n)))),
        ("dim1", (3, n * 2 + 1), 1, list(range(n))),
        ("dim2-3d", (2, 3, n + 2), 2, [(r + 1) % n for r in range(n)]),
        ("empty-shards", (1, 4), 0, list(range(n))),
        ("two-per-rank", (n * 2 + 1, 2), 0, [r % n for r in range(2 * n)]),
        ("one-owner", (3, 3), 0, [n - 1]),
    ]
    for label, shape, dim, owners in cases:
        full = global_tensor(shape)
        out = impl.all_gather_sharded_tensor(make_sharded(full, dim, owners))
        _expect_equal(problems, label, out, full)
    for dtype in (torch.bool, torch.int16, torch.bfloat16, torch.complex64, torch.float64):
        full = global_tensor((n + 1, 2), dtype)
        out = impl.all_gather_sharded_tensor(make_sharded(full, 0, list(range(n))))
        _expect_equal(problems, str(dtype), out, full)
    full = global_tensor((n, 3))
    out = impl.gather_state_dict({"st": [make_sharded(full, 1, list(range(n)))]})
    _expect_equal(problems, "in state dict", out["st"][0], full)
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_all_gather_sharded_tensor(world_factory, size) -> None:
    assert world_factory(size).run(job_all_gather_sharded) == [[]] * size


def job_offload(ranks_only: tuple[int, ...]) -> object:
    n = context().world_size
    dt = make_dtensor(global_tensor((n, 2)), (n,), [Shard(0)])
    st = make_sharded(global_tensor((n, 2)), 0, list(range(n)))
    plain = torch.arange(10)
    state = {"d": dt, "s": st, "t": plain, "x": [plain, 1, "s"], "ones": torch.ones(10)}
    out = impl.offload_state_dict_to_cpu(state, ranks_only=ranks_only)
    if out in ({}, None):
        return out
    return [
        out["d"] is dt,
        out["s"] is st,
        out["t"] is plain,
        out["x"][0] is plain and out["x"][1:] == [1, "s"],
        torch.equal(out["ones"], torch.ones(10)),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_offload_state_dict_to_cpu(world_factory, size) -> None:
    world = world_factory(size)
    assert world.run(job_offload, ()) == [[True] * 5] * size
    results = world.run(job_offload, (0,))
    assert results[0] == [True] * 5
    assert all(r == {} for r in results[1:])


def test_offload_state_dict_to_cpu_single_process() -> None:
    weird = {1}
    with pytest.raises(ValueError, match=r"unsupported value of type set at state_dict\['w'\]"):
        impl.offload_state_dict_to_cpu({"t": torch.ones(2), "w": weird})
    out = impl.offload_state_dict_to_cpu({"w": weird}, type_check=False)
    assert out["w"] == weird and out["w"] is not weird
