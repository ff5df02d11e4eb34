"""Tests of the persistent world: results, errors, hangs, deaths, restarts, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conformance.world import JobFailed, World, WorldUnavailable, context
from conformance.world.context import health_check
from tests.processes import ctrl_c_as_in_a_terminal

# ---------------------------------------------------------------- jobs (run on every rank)


def rank_and_size() -> tuple[int, int]:
    ctx = context()
    return ctx.rank, ctx.world_size


def all_reduce_rank_sum() -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([context().rank + 1])
    dist.all_reduce(t)
    return int(t.item())


def raise_on(rank: int) -> int:
    if context().rank == rank:
        raise ValueError(f"bad input on rank {rank}")
    return context().rank


def raise_on_then_collective(rank: int) -> int:
    """One rank raises; the others block in a collective it never joins."""
    import torch
    import torch.distributed as dist

    if context().rank == rank:
        raise KeyError("only I know")
    t = torch.ones(1)
    dist.all_reduce(t)
    return int(t.item())


class EarlyReturn:
    may_desync = True


def return_early_on(rank: int) -> object:
    """One rank returns a result that says it skipped collectives; the other blocks."""
    import torch
    import torch.distributed as dist

    if context().rank == rank:
        return EarlyReturn()
    t = torch.ones(1)
    dist.all_reduce(t)
    return int(t.item())


def hang_on(rank: int) -> int:
    if context().rank == rank:
        time.sleep(3600)
    return context().rank


def exit_on(rank: int, how: str) -> int:
    if context().rank == rank:
        if how == "exit":
            os._exit(7)
        elif how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "abort":
            os.abort()  # what gloo does when ranks fall out of step
    time.sleep(0.2)
    return context().rank


def compute_on(rank: int, seconds: float) -> int:
    """``rank`` keeps a core busy for ``seconds`` (a slow rank, not a hung one)."""
    if context().rank == rank:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass
    return context().rank


def raise_on_while_other_computes(rank: int, seconds: float) -> int:
    """``rank`` raises at once; the other computes for ``seconds`` before it answers."""
    if context().rank == rank:
        raise ValueError("early")
    return compute_on(context().rank, seconds)


def mesh_identity(shape: tuple[int, ...]) -> tuple[int, int]:
    ctx = context()
    first = ctx.mesh(shape)
    again = ctx.mesh(shape)
    return id(first) == id(again), first.ndim


def use_meshes(*shapes: tuple[int, ...], on: int | None = None) -> None:
    """Ask for the meshes of ``shapes`` (on rank ``on`` only, when given)."""
    if on is None or context().rank == on:
        for shape in shapes:
            context().mesh(shape)


def use_group(ranks: tuple[int, ...], on: int | None = None) -> None:
    """Ask for the subgroup over ``ranks`` (built on every rank; asked on rank ``on`` only)."""
    if on is None or context().rank == on:
        context().group(ranks)


def leave_group_out_of_step(ranks: tuple[int, ...], rank: int) -> object:
    """``rank`` starts an all_reduce on the subgroup over ``ranks`` that no other rank joins,
    and returns saying so; the others do nothing."""
    import torch
    import torch.distributed as dist

    if context().rank == rank:
        dist.all_reduce(torch.ones(1), group=context().group(ranks), async_op=True)
        return EarlyReturn()
    return None


def unpicklable_result() -> object:
    return lambda: None


def pid() -> int:
    return os.getpid()


# ---------------------------------------------------------------- tests


@pytest.fixture
def fresh_world():
    """A private 2-rank world with a short timeout, for tests that break it on purpose."""
    world = World(2, job_timeout=5.0, error_grace=1.0)
    yield world
    world.close()


@pytest.mark.parametrize("size", [1, 2, 4])
def test_every_rank_answers(world_factory, size):
    world = world_factory(size)
    assert world.run(rank_and_size) == [(r, size) for r in range(size)]
    expected = size * (size + 1) // 2
    assert world.run(all_reduce_rank_sum) == [expected] * size


def test_exception_on_one_rank_names_it(world_factory):
    world = world_factory(2)
    with pytest.raises(JobFailed) as info:
        world.run(raise_on, 1)
    assert info.value.kind == "error"
    assert list(info.value.failures) == [1]
    failure = info.value.failures[1]
    assert failure.type_name == "ValueError"
    assert failure.message == "bad input on rank 1"
    assert "raise_on" in failure.traceback
    # the world goes on
    assert world.run(rank_and_size) == [(0, 2), (1, 2)]


def test_error_while_others_block_returns_promptly(fresh_world):
    fresh_world.start()
    start = time.monotonic()
    with pytest.raises(JobFailed) as info:
        fresh_world.run(raise_on_then_collective, 0)
    elapsed = time.monotonic() - start
    assert info.value.kind == "error"
    assert info.value.failures[0].type_name == "KeyError"
    assert "blocked" in info.value.detail
    assert elapsed < fresh_world.job_timeout, f"took {elapsed:.1f}s, no faster than the 5 s hang timeout"
    assert fresh_world.run(all_reduce_rank_sum) == [3, 3]


def test_early_return_while_others_block_returns_promptly(fresh_world):
    fresh_world.start()
    start = time.monotonic()
    with pytest.raises(JobFailed) as info:
        fresh_world.run(return_early_on, 1)
    assert time.monotonic() - start < fresh_world.job_timeout
    assert isinstance(info.value.results[1], EarlyReturn)
    assert info.value.failures[0].type_name == "Blocked"
    assert fresh_world.run(all_reduce_rank_sum) == [3, 3]


def test_hang_is_reported_and_world_restarts(fresh_world):
    fresh_world.start()
    with pytest.raises(JobFailed) as info:
        fresh_world.run(hang_on, 1)
    assert info.value.kind == "hang"
    assert list(info.value.failures) == [1]
    assert fresh_world.run(all_reduce_rank_sum) == [3, 3]
    assert fresh_world.restarts == 1


def test_a_computing_rank_is_slow_not_hung(fresh_world):
    """Past its deadline a rank still burning CPU is waited for; a sleeping one is not."""
    fresh_world.start()
    fresh_world.job_timeout = 1.0
    start = time.monotonic()
    assert fresh_world.run(compute_on, 1, 3.0) == [0, 1]  # 3 CPU-seconds, three times the timeout
    assert time.monotonic() - start >= 3.0
    assert fresh_world.restarts == 0
    with pytest.raises(JobFailed) as info:
        fresh_world.run(hang_on, 1)
    assert info.value.kind == "hang"


def test_a_computing_rank_is_not_blocked_after_another_raised(fresh_world):
    """The error grace (1 s here) does not cut off a rank that is still computing."""
    fresh_world.start()
    fresh_world.job_timeout = 1.0
    with pytest.raises(JobFailed) as info:
        fresh_world.run(raise_on_while_other_computes, 0, 3.0)
    assert info.value.kind == "error"
    assert list(info.value.failures) == [0]  # rank 1 answered; it was never "Blocked"
    assert info.value.results == {1: 1}
    assert fresh_world.restarts == 0


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("exit", "exited with status 7"),
        ("sigkill", "killed by SIGKILL"),
        ("abort", "killed by SIGABRT"),
    ],
)
def test_dead_rank_is_reported_and_world_restarts(fresh_world, how, expected):
    fresh_world.start()
    old_pids = fresh_world.run(pid)
    with pytest.raises(JobFailed) as info:
        fresh_world.run(exit_on, 1, how)
    assert info.value.kind == "crash"
    assert info.value.failures[1].message == expected
    assert fresh_world.run(all_reduce_rank_sum) == [3, 3]
    assert set(fresh_world.run(pid)).isdisjoint(old_pids)


def sleep_then_rank(seconds: float) -> int:
    time.sleep(seconds)
    return context().rank


def test_submit_returns_at_once_and_result_collects(world_factory):
    """The driver works while the ranks run; two jobs in flight at most, collected in order."""
    world = world_factory(2)
    start = time.monotonic()
    pending = world.submit(sleep_then_rank, 1.0)
    queued = world.submit(monotonic_now)
    assert time.monotonic() - start < 0.5, "submit waited for the job"
    time.sleep(2.0)
    collected = time.monotonic()
    assert pending.result() == [0, 1]
    assert time.monotonic() - start >= 1.0
    assert pending.result() == [0, 1]  # asking again gives the same answer
    started = queued.result()
    assert all(start + 1.0 <= t < collected for t in started), "the queued job waited for the driver"
    assert world.run(rank_and_size) == [(0, 2), (1, 2)]


def test_a_job_beyond_the_limit_first_collects_the_oldest(world_factory):
    """A job whose result nobody asked (its case was dropped) does not block the world."""
    world = world_factory(2)
    oldest = world.submit(sleep_then_rank, 1.0)
    for _ in range(world.max_in_flight - 1):
        world.submit(rank_and_size)
    assert not oldest.done
    last = world.submit(rank_and_size)
    assert oldest.done
    assert last.result() == [(0, 2), (1, 2)]
    assert oldest.result() == [0, 1]


def monotonic_now() -> float:
    return time.monotonic()


def collective_on(rank: int) -> int:
    """Only ``rank`` enters a collective (the others return at once, without saying so)."""
    import torch
    import torch.distributed as dist

    if context().rank == rank:
        dist.all_reduce(torch.ones(1))
    return context().rank


def return_early_everywhere() -> object:
    return EarlyReturn()


def note_run(path: str) -> int:
    """Join a collective, then append this rank's number to ``path`` (a job that must run
    exactly once, and would complete a collective another rank was left blocked in)."""
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1))
    with open(path, "a") as f:
        f.write(f"{context().rank}\n")
    return context().rank


@pytest.mark.parametrize(
    ("job", "args", "verdict"),
    [
        (rank_and_size, (), None),
        (return_early_everywhere, (), None),
        (raise_on, (0,), ("error", {0: "ValueError"})),
        (raise_on_then_collective, (0,), ("error", {0: "KeyError", 1: "Blocked"})),
        (return_early_on, (1,), ("error", {0: "Blocked"})),
        (collective_on, (1,), ("hang", {1: "Timeout"})),  # rank 0 answered as if nothing were wrong
        (hang_on, (1,), ("hang", {1: "Timeout"})),
        (exit_on, (1, "exit"), ("crash", {1: "RankDied"})),
    ],
)
def test_a_queued_job_changes_no_verdict_and_runs_exactly_once(fresh_world, tmp_path, job, args, verdict):
    """Whatever the job before them does (returns, returns early, raises, leaves a rank
    blocked, hangs with or without a rank still in a collective, kills a rank), that job's
    verdict is the one it gets alone (the same kind, on the same ranks), and each job queued
    behind it runs once, in order, on a sound world."""
    fresh_world.start()
    notes = tmp_path / "runs"
    first = fresh_world.submit(job, *args)
    queued = fresh_world.submit(note_run, str(notes))
    last = fresh_world.submit(note_run, str(notes))
    if verdict is None:
        assert len(first.result()) == 2
    else:
        with pytest.raises(JobFailed) as info:
            first.result()
        failures = {rank: f.type_name for rank, f in info.value.failures.items()}
        assert (info.value.kind, failures) == verdict
    assert queued.result() == [0, 1]
    assert last.result() == [0, 1]
    assert sorted(notes.read_text().split()) == ["0", "0", "1", "1"]
    assert fresh_world.run(all_reduce_rank_sum) == [3, 3]


def test_queued_jobs_on_two_live_worlds_do_not_share_their_turns():
    """Each world's ranks take their turns apart from another world's: two worlds queueing
    at once, one of them restarted, still answer every job (the turns' shared memory is held
    as long as the ranks use it, never handed to the next world)."""
    with World(2, job_timeout=10.0) as first, World(2, job_timeout=10.0) as second:
        first.start()
        second.start()
        first.restart()
        for i in range(30):
            jobs = [
                world.submit(return_early_everywhere if i % 3 == 0 else rank_and_size)
                for world in (first, second)
            ]
            jobs += [world.submit(rank_and_size) for world in (first, second)]
            for job in jobs:
                assert len(job.result()) == 2


def test_a_queued_job_behind_a_hang_can_be_dropped(fresh_world, tmp_path):
    """A look-ahead pass that ends at a hang does not run the case queued behind it."""
    from conformance.world.protocol import JobCancelled

    fresh_world.start()
    notes = tmp_path / "runs"
    first = fresh_world.submit(hang_on, 1)
    queued = fresh_world.submit(note_run, str(notes))
    with pytest.raises(JobFailed):
        first.result()
    queued.cancel()
    with pytest.raises(JobCancelled):
        queued.result()
    assert not notes.exists()
    assert fresh_world.run(all_reduce_rank_sum) == [3, 3]


def test_a_job_collected_after_its_deadline_is_not_a_hang():
    """The driver may be busy (drawing the next case) well past a job's deadline before it
    collects: answers that arrived meanwhile are results, not a hang."""
    with World(2, job_timeout=1.0) as world:
        world.run(rank_and_size)
        time.sleep(1.0)  # the ranks settle: idle, they look neither busy nor slow
        pending = world.submit(rank_and_size)
        time.sleep(4.0)  # the ranks answer at once; the driver looks four deadlines later
        assert pending.result() == [(0, 2), (1, 2)]


def test_a_submitted_job_that_fails_raises_from_result(world_factory):
    world = world_factory(2)
    pending = world.submit(raise_on, 0)
    with pytest.raises(JobFailed) as info:
        pending.result()
    assert info.value.kind == "error" and list(info.value.failures) == [0]
    assert world.run(rank_and_size) == [(0, 2), (1, 2)]  # after the health check


def test_a_health_check_probes_the_groups_used_since_the_last_one(fresh_world, world_factory):
    """The default group always; then each group of more than one rank that any rank asked for
    (a subgroup, a mesh's dimension group) since the last check, the same on every rank.
    Mesh dimensions over the whole world are the default group."""
    fresh_world.run(use_meshes, (1, 2), (2, 1), (2,))
    fresh_world.run(use_group, (0, 1))  # built on every rank
    fresh_world.run(health_check)  # whatever was used so far is checked now
    assert fresh_world.run(health_check) == [["world"]] * 2
    fresh_world.run(use_group, (0, 1), on=1)
    assert fresh_world.run(health_check) == [["world", "group (0, 1)"]] * 2
    fresh_world.run(use_meshes, (1, 2), (2, 1), (2,), on=0)
    assert fresh_world.run(health_check) == [["world"]] * 2
    four = world_factory(4)
    four.run(use_meshes, (2, 2), (4,))
    four.run(health_check)
    four.run(use_meshes, (2, 2), (4,), on=3)
    assert four.run(health_check) == [["world", "mesh (2, 2) dim 0", "mesh (2, 2) dim 1"]] * 4


def test_ranks_that_hold_different_meshes_fail_the_health_check(fresh_world):
    """A 1-D mesh over the world needs no new group, so one rank can build it alone: the health
    check says so instead of probing different groups on different ranks."""
    fresh_world.run(use_meshes, (2,), on=1)
    with pytest.raises(JobFailed, match="the ranks hold different meshes or groups"):
        fresh_world.run(health_check)


def test_a_group_left_out_of_step_fails_the_health_check(fresh_world):
    """Rank 0 leaves an all_reduce pending on a subgroup rank 1 did not touch in that job: the
    next job's health check finds it (it hangs there) and the world restarts."""
    fresh_world.run(use_group, (0, 1))
    fresh_world.run(health_check)
    fresh_world.run(leave_group_out_of_step, (0, 1), 0)
    restarts = fresh_world.restarts
    assert fresh_world.run(all_reduce_rank_sum) == [3, 3]
    assert fresh_world.restarts == restarts + 1


def test_unpicklable_result_is_that_ranks_failure(world_factory):
    world = world_factory(2)
    with pytest.raises(JobFailed) as info:
        world.run(unpicklable_result)
    assert info.value.kind == "error"
    assert "could not be pickled" in info.value.failures[0].message


def test_many_jobs_in_a_row(world_factory):
    world = world_factory(2)
    for i in range(200):
        assert world.run(all_reduce_rank_sum) == [3, 3], f"job {i}"


def test_meshes_are_cached_per_shape(world_factory):
    world = world_factory(4)
    assert world.run(mesh_identity, (2, 2)) == [(True, 2)] * 4
    assert world.run(mesh_identity, (4,)) == [(True, 1)] * 4
    assert world.run(mesh_identity, (1, 2, 2)) == [(True, 3)] * 4


def test_two_worlds_of_different_sizes_at_once(world_factory):
    small, large = world_factory(2), world_factory(4)
    assert small.run(all_reduce_rank_sum) == [3, 3]
    assert large.run(all_reduce_rank_sum) == [10] * 4
    assert small.run(rank_and_size) == [(0, 2), (1, 2)]


def test_close_leaves_no_process():
    world = World(2)
    pids = world.run(pid)
    world.close()
    for p in pids:
        assert not _process_exists(p), f"rank process {p} outlived close()"


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="world size must be an integer from 1 to 8, got 0"):
        World(0)
    with pytest.raises(ValueError, match="world size must be an integer from 1 to 8, got 9"):
        World(9)
    with pytest.raises(ValueError, match="backend must be one of gloo, nccl"):
        World(2, backend="mpi")


def test_nccl_without_gpus_is_unavailable_not_a_crash():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(WorldUnavailable, match="needs CUDA GPUs"):
        World(2, backend="nccl")


def _process_exists(p: int) -> bool:
    try:
        os.kill(p, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose only once reaped; read its state
    try:
        with open(f"/proc/{p}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


DRIVER = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, time
    sys.path.insert(0, {root!r})
    from conformance.world import World
    from tests.test_world import pid
    if __name__ == "__main__":
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it is stuck, if it is
        world = World(2)
        print(" ".join(map(str, world.run(pid))), world._logdir, flush=True)
        if sys.argv[1] == "crash":
            os._exit(1)   # the driver dies without closing anything
        time.sleep(3600)  # wait for Ctrl-C
    """
)


@pytest.mark.parametrize("how", ["sigint", "crash"])
def test_ranks_die_with_their_driver(tmp_path, how):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=root))
    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen(
        [sys.executable, str(script), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    try:
        *pids, logdir = proc.stdout.readline().split()
        pids = [int(p) for p in pids]
        assert len(pids) == 2, proc.stderr.read()
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            proc.kill()
            pytest.fail(f"the driver did not exit within 60s; its stacks:\n{proc.communicate()[1][-4000:]}")
        deadline = time.monotonic() + 10
        while any(_process_exists(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _process_exists(p)], "ranks outlived their driver"
        assert not os.path.exists(logdir), "the world's log directory outlived its driver"
    finally:
        proc.kill()
        proc.wait()
    leaked = {n for n in set(os.listdir("/dev/shm")) - shm_before if "torch" in n}
    assert not leaked, f"shared-memory segments leaked: {leaked}"


def test_the_world_package_imports_nothing_of_the_harness():
    """harness imports the world; the world (either transport) never imports harness, check,
    runner or plugin, so there is no cycle."""
    code = (
        "import sys, conformance.world, conformance.world.torchrun_main, conformance.torchrun\n"
        "bad = [m for m in ('conformance.harness', 'conformance.check', 'conformance.runner',"
        " 'conformance.plugin') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_the_harness_takes_its_world_kind_from_its_config():
    from conformance.harness import Harness, HarnessConfig

    with pytest.raises(WorldUnavailable, match="no torchrun world is running"):
        Harness(HarnessConfig(launcher="torchrun")).world(2)
    with pytest.raises(WorldUnavailable, match="launcher must be one of spawn, torchrun"):
        Harness(HarnessConfig(launcher="mpirun")).world(2)
