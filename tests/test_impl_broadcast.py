"""impl.broadcast_state_dict, impl.distribute_state_dict, impl.broadcast_tensors,
impl.distribute_tensors."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard

import impl
from conformance.world import JobFailed, context
from tests.builders import global_tensor, make_dtensor

SIZES = [2, 4]


def _full_state_dict(n: int) -> dict:
    return {
        "w": global_tensor((n + 1, 3)),
        "dt": global_tensor((2 * n + 1, 3)),
        "dt2d": global_tensor((4, 5)),
        "strided": global_tensor((4 * n, 2)),
        "partial": global_tensor((3,), torch.float64),
        "partial_int": global_tensor((3,), torch.int64),
        "partial_max": global_tensor((2,)),
        "zero_d": torch.tensor(5.0),
        "dt_zero_d": torch.tensor(6.0),
        "bool": global_tensor((n + 1,), torch.bool),
        "int16": global_tensor((n + 1, 2), torch.int16),
        "complex": global_tensor((2, n), torch.complex64),
        "empty": torch.empty(0, 3),
        "noncontig": global_tensor((3, 4)).t(),
        "not_local": torch.ones(2),
        "none_local": torch.ones(2),
        "step": 3,
        "name": "model",
        "nested": {"a": [1, 2]},
    }


def _local_state_dict(n: int) -> dict:
    def zeros_dtensor(shape, mesh_shape, placements, dtype=torch.float32):
        zeros = torch.zeros(shape, dtype=dtype)
        if placements[0].is_partial():
            mesh = context().mesh(mesh_shape)
            return DTensor.from_local(zeros, mesh, placements, run_check=False)
        return make_dtensor(zeros, mesh_shape, placements)

    return {
        "w": torch.zeros(1),
        "dt": zeros_dtensor((2 * n + 1, 3), (n,), [Shard(0)]),
        "dt2d": zeros_dtensor((4, 5), (2, n // 2), [Shard(1), Shard(0)]),
        "strided": zeros_dtensor((4 * n, 2), (2, n // 2), [_StridedShard(0, split_factor=n // 2), Shard(0)]),
        "partial": zeros_dtensor((3,), (n,), [Partial("sum")], torch.float64),
        "partial_int": zeros_dtensor((3,), (n,), [Partial("sum")], torch.int64),
        "partial_max": zeros_dtensor((2,), (n,), [Partial("max")]),
        "zero_d": torch.tensor(0.0),
        "dt_zero_d": zeros_dtensor((), (n,), [Replicate()]),
        "bool": torch.zeros(1, dtype=torch.bool),
        "int16": zeros_dtensor((n + 1, 2), (n,), [Shard(0)], torch.int16),
        "complex": zeros_dtensor((2, n), (n,), [Shard(1)], torch.complex64),
        "empty": torch.zeros(1),
        "noncontig": torch.zeros(1),
        "none_local": None,
        "step": 0,
        "name": None,
        "nested": None,
        "extra": "kept unless strict",
    }


def _expected_local(full: torch.Tensor, like: DTensor) -> torch.Tensor:
    """This rank's local tensor of ``full`` under ``like``'s layout (local slicing); for a 1-D
    Partial: sum puts ``full`` on rank 0 and zeros elsewhere, max puts ``full`` everywhere."""
    placement = like.placements[0]
    if placement.is_partial():
        if placement.reduce_op == "sum" and context().rank != 0:
            return torch.zeros_like(full)
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def _check_loaded(full: dict, local: dict, before: dict, cpu_offload: bool) -> list[str]:
    """Every present entry holds the full value; DTensors keep identity (values via full_tensor)."""
    problems = []
    for key, want in full.items():
        if key == "not_local":
            if key in local:
                problems.append("absent key was added")
            continue
        if key == "none_local":
            if local[key] is not None:
                problems.append("None entry was written")
            continue
        got = local[key]
        if not isinstance(want, torch.Tensor):
            if got != want:
                problems.append(f"{key}: {got!r} != {want!r}")
            continue
        if isinstance(before[key], DTensor):
            if not isinstance(got, DTensor):
                problems.append(f"{key}: DTensor replaced by {type(got).__name__}")
                continue
            if not cpu_offload and got is not before[key]:
                problems.append(f"{key}: DTensor object replaced")
            if got.placements != before[key].placements:
                problems.append(f"{key}: placements changed")
            value, want = got.to_local(), _expected_local(want, got)
        else:
            value = got
            if isinstance(got, DTensor) or got.device.type != "cpu":
                problems.append(f"{key}: not a CPU tensor")
        if value.dtype != want.dtype or not torch.equal(value, want):
            problems.append(f"{key}: value {value} != {want}")
    return problems


def job_broadcast(strict: bool, cpu_offload: bool) -> list[str]:
    ctx = context()
    full = _full_state_dict(ctx.world_size)
    local = _local_state_dict(ctx.world_size)
    before = dict(local)
    impl.broadcast_state_dict(
        full if ctx.rank == 0 else {},
        local,
        torch.device("cpu"),
        strict=strict,
        cpu_offload=cpu_offload,
    )
    problems = _check_loaded(full, local, before, cpu_offload)
    if ("extra" in local) == strict:
        problems.append(f"strict={strict} but 'extra' present={'extra' in local}")
    if ctx.rank == 0 and local["w"].untyped_storage().data_ptr() == (full["w"].untyped_storage().data_ptr()):
        problems.append("rank 0's local entry aliases full_state_dict")
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_broadcast_state_dict(world_factory, size) -> None:
    world = world_factory(size)
    for strict, cpu_offload in [(False, False), (True, True)]:
        assert world.run(job_broadcast, strict, cpu_offload) == [[]] * size


def job_broadcast_errors(case: str) -> None:
    ctx = context()
    n = ctx.world_size
    local = {"dt": make_dtensor(torch.zeros(n, 2), (n,), [Shard(0)])}
    full = {"dt": global_tensor((n, 2))}
    if case == "dtensor-in-full":
        full = {"dt": make_dtensor(global_tensor((n, 2)), (n,), [Shard(0)])}
    elif case in ("local-shape", "tensors-local-shape") and ctx.rank == 1:
        local = {"dt": make_dtensor(torch.zeros(n, 3), (n,), [Shard(0)])}
    if case == "tensors-local-shape":
        if ctx.rank != 0:
            full = {"dt": impl.TensorInfo(torch.Size([n, 2]), torch.float32)}
        impl.broadcast_tensors(full, local, ["dt"], torch.device("cpu"))
    else:
        impl.broadcast_state_dict(full, local, torch.device("cpu"))


@pytest.mark.parametrize("size", SIZES)
def test_broadcast_state_dict_errors_raise_on_every_rank(world_factory, size) -> None:
    world = world_factory(size)
    expected = {
        "dtensor-in-full": "full_state_dict['dt'] is a DTensor",
        "local-shape": "rank 1, local_state_dict['dt']: DTensor global shape",
        "tensors-local-shape": "broadcast_tensors: rank 1, local_state_dict['dt']: DTensor",
    }
    for case, fragment in expected.items():
        with pytest.raises(JobFailed) as info:
            world.run(job_broadcast_errors, case)
        assert sorted(info.value.failures) == list(range(size))
        for failure in info.value.failures.values():
            assert failure.type_name == "ValueError" and fragment in failure.message


def job_distribute_state_dict() -> list[str]:
    n = context().world_size
    full = _full_state_dict(n)
    local = _local_state_dict(n)
    before = dict(local)
    impl.distribute_state_dict(full, local, torch.device("cpu"))
    problems = _check_loaded(full, local, before, cpu_offload=False)
    if "extra" not in local:
        problems.append("'extra' removed")
    if local["w"].untyped_storage().data_ptr() == full["w"].untyped_storage().data_ptr():
        problems.append("local entry aliases full_state_dict")
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_distribute_state_dict(world_factory, size) -> None:
    assert world_factory(size).run(job_distribute_state_dict) == [[]] * size


def job_broadcast_tensors() -> list[str]:
    ctx = context()
    n = ctx.world_size
    full = {"a": global_tensor((n + 1, 2)), "b": global_tensor((2 * n,), torch.int64)}
    if ctx.rank != 0:
        # A meta tensor or a (size, dtype) record both describe the full tensor.
        full = {
            "a": torch.empty(full["a"].shape, device="meta"),
            "b": impl.TensorInfo(full["b"].size(), full["b"].dtype),
        }
    dt = make_dtensor(torch.zeros(2 * n, dtype=torch.int64), (n,), [Shard(0)])
    local = {"a": torch.zeros(1), "b": dt}
    impl.broadcast_tensors(full, local, ["a", "b"], torch.device("cpu"))
    problems = []
    if not torch.equal(local["a"], global_tensor((n + 1, 2))):
        problems.append("plain entry")
    if local["b"] is not dt or not torch.equal(dt.full_tensor(), global_tensor((2 * n,), torch.int64)):
        problems.append("DTensor entry")
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_broadcast_tensors(world_factory, size) -> None:
    assert world_factory(size).run(job_broadcast_tensors) == [[]] * size


def job_distribute_tensors() -> list[str]:
    """Upstream's even/uneven scenario plus a meta DTensor and untouched entries."""
    ctx = context()
    n = ctx.world_size
    mesh = ctx.mesh((n,))
    even, uneven = global_tensor((n, 2)), global_tensor((1, 2)) + 1
    even_dt = make_dtensor(torch.zeros(n, 2), (n,), [Shard(0)])
    uneven_dt = make_dtensor(torch.zeros(1, 2), (n,), [Shard(0)])
    meta_local = torch.empty(uneven_dt.to_local().shape, device="meta")
    meta_dt = DTensor.from_local(meta_local, mesh, [Shard(0)], run_check=False, shape=(1, 2), stride=(2, 1))
    plain = torch.ones(3)
    local = {
        "even": [even_dt, even],
        "uneven": (uneven_dt, uneven),
        "meta": (meta_dt, uneven),
        "plain": plain,
    }
    impl.distribute_tensors(local, ["even", "uneven", "meta", "plain", "absent"], torch.device("cpu"))
    problems = []
    for key, want, old in [
        ("even", even, even_dt),
        ("uneven", uneven, uneven_dt),
        ("meta", uneven, meta_dt),
    ]:
        got = local[key]
        if not isinstance(got, DTensor) or got.size() != old.size() or got.stride() != old.stride():
            problems.append(f"{key}: not a DTensor of the old shape")
            continue
        if key != "meta" and got is not old:
            problems.append(f"{key}: object replaced")
        if key == "meta" and got.is_meta:
            problems.append("meta DTensor still meta")
        if not torch.equal(got.full_tensor(), want):
            problems.append(f"{key}: wrong values")
    if local["plain"] is not plain or "absent" in local:
        problems.append("other entries touched")
    return problems


@pytest.mark.parametrize("size", SIZES)
def test_distribute_tensors(world_factory, size) -> None:
    assert world_factory(size).run(job_distribute_tensors) == [[]] * size


def job_broadcast_subgroup() -> object:
    """The source is the subgroup's rank 0 (global rank 2), not global rank 0."""
    import torch.distributed as dist

    ctx = context()
    group = dist.new_group([2, 3])
    if ctx.rank not in (2, 3):
        return None
    full = {"t": torch.arange(6) * ctx.rank, "k": f"from {ctx.rank}"}
    local = {"t": torch.zeros(1), "k": None}
    impl.broadcast_state_dict(full, local, torch.device("cpu"), pg=group)
    return local["t"].tolist(), local["k"]


def test_broadcast_state_dict_subgroup(world_factory) -> None:
    results = world_factory(4).run(job_broadcast_subgroup)
    expected = ([0, 2, 4, 6, 8, 10], "from 2")
    assert results == [None, None, expected, expected]


def job_distribute_state_dict_error_on_one_rank() -> str:
    ctx = context()
    n = ctx.world_size
    rows = n + 1 if ctx.rank == 1 else n
    local = {"dt": make_dtensor(torch.zeros(rows, 2), (n,), [Shard(0)]), "k": 0}
    impl.distribute_state_dict({"dt": global_tensor((n, 2)), "k": 1}, local, torch.device("cpu"))
    return "ok"


@pytest.mark.parametrize("size", SIZES)
def test_distribute_state_dict_error_raises_on_that_rank(world_factory, size) -> None:
    with pytest.raises(JobFailed) as info:
        world_factory(size).run(job_distribute_state_dict_error_on_one_rank)
    assert list(info.value.failures) == [1]
    failure = info.value.failures[1]
    assert failure.type_name == "ValueError"
    assert "distribute_state_dict: local_state_dict['dt']: DTensor global shape" in failure.message
