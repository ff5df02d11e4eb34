"""The suite on a torchrun world (conformance.torchrun): one node, two nodes, a hang, a crash.

The outer tests launch ``torchrun`` as a subprocess. The ``test_inner_*`` tests run only
inside such a launch (``SDC_TORCHRUN_INNER=1``), on rank 0, with the harness fixture handing
out the torchrun world.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.world import JobFailed, context

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
INNER = os.environ.get("SDC_TORCHRUN_INNER") == "1"
inner = pytest.mark.skipif(not INNER, reason="runs only inside a torchrun launch")
outer = pytest.mark.skipif(INNER, reason="not inside a torchrun launch")


# --------------------------------------------------------------------------- jobs


def rank_and_size() -> tuple[int, int]:
    ctx = context()
    return ctx.rank, ctx.world_size


def raise_on(rank: int) -> int:
    if context().rank == rank:
        raise ValueError(f"boom on rank {rank}")
    return context().rank


def sleep_on(rank: int, seconds: float) -> int:
    if context().rank == rank:
        time.sleep(seconds)
    return context().rank


def exit_on(rank: int) -> int:
    if context().rank == rank:
        os._exit(7)
    time.sleep(60)  # the others wait; torchrun stops them
    return context().rank


def hold_the_gil_on(rank: int, seconds: int) -> int:
    """Keep ``rank``'s other threads (its heartbeat; on rank 0 the driver) off the GIL for
    ``seconds``: C's ``sleep`` called through ``PyDLL`` does not release it."""
    if context().rank == rank:
        ctypes.PyDLL(None).sleep(seconds)
    return context().rank


def _size() -> int:
    return int(os.environ["WORLD_SIZE"])


# --------------------------------------------------------------------------- inner tests


@inner
def test_inner_jobs(harness):
    world = harness.world(_size())
    n = world.size
    assert world.run(rank_and_size) == [(r, n) for r in range(n)]
    with pytest.raises(JobFailed) as info:
        world.run(raise_on, 1)
    assert info.value.kind == "error"
    assert list(info.value.failures) == [1]
    assert "boom on rank 1" in info.value.failures[1].message
    assert info.value.results[0] == 0
    from conformance.selfcheck import gather_check

    assert world.run(gather_check) == [True] * n  # after the health check, meshes work
    pending = world.submit(rank_and_size)  # rank 0 may work while the ranks run
    assert pending.result() == [(r, n) for r in range(n)]
    with pytest.raises(Exception, match="WORLD_SIZE"):
        harness.world(n + 1)
    print("INNER-JOBS-OK")


@inner
def test_inner_hang(harness):
    world = harness.world(_size())
    world.job_timeout = 3.0  # short for the hang only; the other jobs keep the run's timeout
    with pytest.raises(JobFailed) as info:
        world.run(sleep_on, 1, 600)
    assert info.value.kind == "hang"
    assert list(info.value.failures) == [1]
    print("INNER-HANG-RAISED")
    world.run(rank_and_size)  # the world is lost: this ends the run


@inner
def test_inner_gil_held(harness):
    world = harness.world(_size())
    for rank in range(world.size):  # each rank's heartbeat stops while the others watch
        assert world.run(hold_the_gil_on, rank, 4) == list(range(world.size))
    print("INNER-GIL-OK")


@inner
def test_inner_crash(harness):
    world = harness.world(_size())
    world.run(exit_on, 1)


# --------------------------------------------------------------------------- outer tests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("SDC_") or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]:
        del env[key]
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _launch(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*TORCHRUN, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that a timeout kills torchrun and its ranks together
    )


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    done = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            done.append((proc.returncode, out))
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish within {timeout:g}s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return done


# Generous: these bound a run that fails to end, and a loaded CI machine may be five times slower.
RUN_LIMIT = 600.0


def _standalone(module_args: list[str], timeout: float = RUN_LIMIT, **env: str) -> tuple[int, str, float]:
    start = time.monotonic()
    args = [
        "--standalone",
        "--nproc-per-node",
        "2",
        "--monitor-interval",
        "0.1",
        "-m",
        "conformance.torchrun",
    ]
    [(code, out)] = _wait([_launch([*args, *module_args], _env(**env))], timeout)
    return code, out, time.monotonic() - start


@outer
def test_suite_selection_on_one_node():
    code, out, _ = _standalone(
        [
            "--",
            "conformance/suite",
            "-p",
            "no:cacheprovider",
            "-q",
            "-k",
            "test_flatten_state_dict or test_gather_state_dict",
        ],
        SDC_MAX_EXAMPLES="3",
    )
    assert code == 0, out
    assert " passed" in out and "cases executed" in out, out


@outer
def test_two_nodes():
    port = _free_port()
    common = [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "--rdzv-backend",
        "static",
    ]
    procs = [
        _launch([*common, "--node-rank", str(node), "-m", "conformance.torchrun", "selfcheck"], _env())
        for node in (0, 1)
    ]
    (code0, out0), (code1, out1) = _wait(procs, RUN_LIMIT)
    both = f"node 0:\n{out0[-6000:]}\nnode 1:\n{out1[-6000:]}"
    assert code0 == 0, both
    assert code1 == 0, both
    assert "torchrun world of 2 (gloo): ok" in out0, out0


@outer
def test_hang_ends_the_run_with_a_report():
    code, out, seconds = _standalone(
        [
            "--",
            "tests/test_torchrun.py",
            "-p",
            "no:cacheprovider",
            "-q",
            "-s",
            "-k",
            "test_inner_jobs or test_inner_hang",
        ],
        SDC_TORCHRUN_INNER="1",
        SDC_CASE_TIMEOUT="30",  # a loaded machine may take seconds to build a mesh
    )
    assert code != 0, out
    assert "INNER-JOBS-OK" in out and "INNER-HANG-RAISED" in out, out
    assert "torchrun world lost" in out and "job hang on rank(s) 1" in out, out
    assert "in sleep_on" in out, out  # where rank 1 is stuck
    assert seconds < RUN_LIMIT / 2, out  # the hang ended the run; it did not run into the limit


@outer
def test_ranks_kept_off_the_gil_past_the_heartbeat_limits_are_not_dead():
    """Each rank in turn keeps its heartbeat thread off the GIL for 4 s, four times the limits
    (a rank's for rank 0, rank 0's for the others): on one host a rank's liveness is its
    process, so every job simply ends."""
    code, out, _ = _standalone(
        ["--", "tests/test_torchrun.py", "-p", "no:cacheprovider", "-q", "-s", "-k", "test_inner_gil_held"],
        SDC_TORCHRUN_INNER="1",
        SDC_TORCHRUN_DEAD_AFTER="1",
        SDC_TORCHRUN_DRIVER_LOST_AFTER="1",
    )
    assert code == 0, out
    assert "INNER-GIL-OK" in out, out


@outer
def test_dead_rank_ends_the_run_with_a_report():
    code, out, _ = _standalone(
        ["--", "tests/test_torchrun.py", "-p", "no:cacheprovider", "-q", "-k", "test_inner_crash"],
        SDC_TORCHRUN_INNER="1",
        SDC_CASE_TIMEOUT="30",
    )
    assert code != 0, out
    assert "job crash on rank(s) 1" in out, out
