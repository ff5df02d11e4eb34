"""Running under ``torchrun``: rank 0 drives (pytest, or the self-check), every rank executes.

Usage (every node runs the same line; extra arguments go to pytest on rank 0)::

    torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m conformance.torchrun -- conformance/suite -p no:cacheprovider
    torchrun --standalone --nproc-per-node 2 -m conformance.torchrun selfcheck

:func:`run_under_torchrun` is the entry point: global rank 0 starts the one
:class:`~conformance.world.torchrun.TorchrunWorld` and runs pytest with ``--sdc-launcher
torchrun`` (so ``Harness.world(size)`` asks :func:`launched_world` for it); the other ranks run
:func:`~conformance.world.torchrun_rank.serve_forever`. A lost world ends the run with status 1.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from conformance.world.protocol import DEFAULT_JOB_TIMEOUT, DEFAULT_START_TIMEOUT, WorldUnavailable
from conformance.world.torchrun import TorchrunWorld, WorldLost
from conformance.world.torchrun_rank import say, serve_forever

_driver: TorchrunWorld | None = None  # the world rank 0 drives, while it drives


def launched_world(
    size: int,
    backend: str,
    job_timeout: float,
    setup: tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...] = (),
) -> TorchrunWorld:
    """The one torchrun world, checked against the world the suite asks for; ``setup`` jobs
    run once, before its first case. What ``Harness.world(size)`` returns with launcher
    torchrun."""
    world = _driver
    if world is None:
        raise WorldUnavailable(
            "launcher torchrun but no torchrun world is running here: start the suite with "
            "`torchrun ... -m conformance.torchrun -- <pytest args>` (rank 0 drives)"
        )
    if size != world.size:
        raise WorldUnavailable(
            f"the torchrun world has WORLD_SIZE={world.size} ranks but a world of {size} was asked "
            f"for: run with --world-sizes {world.size} (SDC_WORLD_SIZES={world.size})"
        )
    if backend != world.backend:
        raise WorldUnavailable(
            f"the torchrun world uses backend {world.backend} but the suite asked for {backend}"
        )
    if not world.set_up:
        # setup (imports, the first meshes) gets a world start's allowance, not a case's
        world.job_timeout = max(job_timeout, DEFAULT_START_TIMEOUT)
        for fn, args in setup:
            world.run(fn, *args)
        world.set_up = True
    world.job_timeout = job_timeout
    return world


def run_under_torchrun(pytest_args: list[str], plugins: list[Any] | None = None) -> int:
    """Rank 0: pytest on the torchrun world, then shut the other ranks down; returns pytest's
    status (1 if the world was lost). Other ranks: serve jobs until shutdown; returns 0."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        say(
            "state-dict-conformance: --launcher torchrun must itself be started by torchrun, e.g. "
            "`torchrun --nproc-per-node 2 -m conformance run --launcher torchrun`"
        )
        return 2
    os.environ.setdefault("SDC_WORLD_SIZES", os.environ["WORLD_SIZE"])
    backend = os.environ.setdefault("SDC_BACKEND", "gloo")
    if os.environ["RANK"] != "0":
        return serve_forever(backend)
    args = ["--sdc-launcher", "torchrun", *pytest_args]
    return _drive(lambda: _pytest(args, plugins), backend)


def _pytest(pytest_args: list[str], plugins: list[Any] | None) -> int:
    import pytest

    return int(pytest.main(list(pytest_args), plugins=list(plugins or [])))


def _drive(body: Callable[[], int], backend: str) -> int:
    global _driver
    world = TorchrunWorld(backend, job_timeout=float(os.environ.get("SDC_CASE_TIMEOUT", DEFAULT_JOB_TIMEOUT)))
    try:
        world.start()
    except WorldUnavailable as exc:
        say(f"state-dict-conformance: {exc}")
        return 2
    _driver = world
    previous = signal.signal(signal.SIGTERM, world.on_sigterm)
    status = 1
    try:
        status = body()
    except WorldLost:
        pass
    finally:
        world.close()
        signal.signal(signal.SIGTERM, previous)
        _driver = None
    if world.lost is not None:
        say(f"state-dict-conformance: the run stopped early: torchrun world lost: {world.lost}")
        return 1
    return status


def selfcheck() -> int:
    """A collective and a DTensor gather on every rank of the torchrun world."""
    from conformance.selfcheck import gather_check

    backend = os.environ.get("SDC_BACKEND", "gloo")
    if os.environ.get("RANK", "0") != "0":
        return serve_forever(backend)

    def body() -> int:
        world = _driver
        assert world is not None
        # the world's first job (imports, the first mesh) gets a start's allowance, as setup does
        world.job_timeout = max(world.job_timeout, DEFAULT_START_TIMEOUT)
        start = time.perf_counter()
        ok = world.run(gather_check)
        status = "ok" if all(ok) else "FAILED"
        print(
            f"torchrun world of {world.size} ({world.backend}): {status} in {time.perf_counter() - start:.2f}s",
            flush=True,
        )
        return 0 if all(ok) else 1

    return _drive(body, backend)


def main(argv: list[str] | None = None) -> int:
    """``python -m conformance.torchrun [selfcheck | [--] pytest args]`` on every rank."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if args == ["selfcheck"]:
        return selfcheck()
    # conformance is imported before pytest starts, so pytest cannot rewrite its asserts.
    return run_under_torchrun(["-W", "ignore::pytest.PytestAssertRewriteWarning", *args])


def exit_with(code: int) -> None:
    """End a torchrun rank's process with ``code`` without waiting for its threads: a rank's
    thread may still be stuck in a collective of a lost world."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
