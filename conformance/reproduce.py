"""The running side of a ``replay --script`` script: one rank per process, spawned here or
launched by torchrun, each calling the script's ``call_target``; rank 0 judges every rank's
outcome with the oracle and prints what ``replay`` prints.

Outcomes travel through the process group's store, not a collective, so that a rank left
inconsistent by a raise still reports; a rank blocked in a collective gives up after
``SDC_SCRIPT_TIMEOUT`` seconds (60), the group's timeout.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta

from conformance import wire
from conformance.case import Case
from conformance.observation import Outcome, RaisedObs

_KEY = "sdc-script/outcome/{rank}"


def launch(case: Case, call_target: Callable[[], Outcome], target: str) -> int:
    """Run ``call_target`` on every rank of ``case``'s world: this process's rank where
    torchrun launched it (``RANK`` / ``WORLD_SIZE``), else ranks spawned here. Returns the exit
    status: 1 when a rank differs from the contract, 0 when every rank conforms."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if int(os.environ["WORLD_SIZE"]) != case.world_size:
            print(
                f"error: the case needs {case.world_size} ranks, torchrun started {os.environ['WORLD_SIZE']}"
            )
            return 2
        return run_rank(int(os.environ["RANK"]), case, call_target, target, None)
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(_spawned, args=(case, call_target, target, port), nprocs=case.world_size)
    except mp.ProcessExitedException as exc:
        return exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    return 0


def _spawned(rank: int, case: Case, call_target: Callable[[], Outcome], target: str, port: int) -> None:
    status = run_rank(rank, case, call_target, target, port)
    if status:
        sys.exit(status)  # the spawning process reads it as this rank's exit code


def run_rank(rank: int, case: Case, call_target: Callable[[], Outcome], target: str, port: int | None) -> int:
    """Join the world (gloo, CPU), call, report the outcome; rank 0 prints the verdict."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
    import torch
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _get_default_store

    from conformance.world import install_context

    timeout = timedelta(seconds=float(os.environ.get("SDC_SCRIPT_TIMEOUT", "60")))
    init = "env://" if port is None else f"tcp://127.0.0.1:{port}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=case.world_size, timeout=timeout)
    install_context(rank, case.world_size, "gloo", torch.device("cpu"))
    store = _get_default_store()
    store.set(_KEY.format(rank=rank), wire.dumps(call_target()))
    if rank != 0:
        return 0
    observed = [_outcome_of(store, r, 2 * timeout) for r in range(case.world_size)]
    from conformance.check import judge

    report = judge(case, target, observed)
    print(f"reproducing {case.describe()} against {target}")
    print("\n".join(report.rank_lines()), flush=True)
    return 0 if report.passed else 1


def _outcome_of(store: object, rank: int, timeout: timedelta) -> Outcome:
    key = _KEY.format(rank=rank)
    try:
        store.wait([key], timeout)  # type: ignore[attr-defined]
    except Exception:  # the store's timeout: the rank never reported
        return Outcome(
            RaisedObs("Hang", f"rank {rank} reported no outcome within {timeout.total_seconds():.0f}s")
        )
    return pickle.loads(store.get(key))  # type: ignore[attr-defined]
