"""The spawned transport: a persistent world of N ranks started from the driver process.

The driver (pytest / Hypothesis process) spawns N ranks once, each joining a gloo or NCCL
process group through a TCPStore it hosts, and speaks the job protocol
(:mod:`conformance.world.protocol`) over one pipe per rank. A job that hangs, or a rank that
dies (exit, signal, gloo's SIGABRT), tears the world down; the next job starts a fresh one.
Ranks exit by themselves when the driver dies.
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from datetime import timedelta
from multiprocessing import connection, get_context
from typing import Any

from conformance.faults import collect_stacks, report_faults_to, stderr_tail
from conformance.progress import cpu_seconds
from conformance.world.context import install_context
from conformance.world.limits import BACKENDS, MAX_WORLD_SIZE, check_nccl_available
from conformance.world.protocol import (
    DEFAULT_ERROR_GRACE,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    SHUTDOWN,
    SKIPPED,
    JobClock,
    JobDriver,
    JobFailed,
    PendingJob,
    RankFailure,
    Replies,
    WorldUnavailable,
    execute,
    ungated,
)

# --------------------------------------------------------------------------- rank side


def _exit_when_parent_dies(parent_pid: int, logdir: str) -> None:
    while True:
        if os.getppid() != parent_pid:
            _driver_gone(logdir)
        time.sleep(0.5)


def _driver_gone(logdir: str) -> None:
    """Exit: the driver is gone without closing the world. Nobody will read the world's stacks
    and stderr any more, so its log directory goes too (every rank tries; one succeeds)."""
    shutil.rmtree(logdir, ignore_errors=True)
    os._exit(3)


class Turns:
    """How the ranks of a spawned world agree whether a queued job may run (see
    :func:`~conformance.world.protocol.gated`): each rank posts whether it returned early from
    the job before, then all meet at a barrier. Shared memory and process-shared semaphores,
    not the process group: a rank still stuck in a collective of the job before cannot take
    the turn for its own collective; it just never arrives, and the driver judges that job."""

    def __init__(self, ctx: Any, size: int) -> None:
        self._size = size
        self._early = ctx.Array("b", 2 * size, lock=False)  # two turns' posts, alternating
        self._barrier = ctx.Barrier(size)
        self._turns = 0  # turns this rank has taken: the same on every rank

    def in_turn(self, rank: int, early: bool) -> bool:
        """Whether every rank finished the job before without returning ``early``. Not where
        the turn itself fails: this rank stays to be counted, and the driver restarts the world.
        (A rank posts into a turn's slots again only after the next turn's barrier, which every
        rank reaches only after reading them.)"""
        first = (self._turns % 2) * self._size
        self._turns += 1
        self._early[first + rank] = early
        try:
            self._barrier.wait()
        except Exception:
            return False
        return not any(self._early[first : first + self._size])


def _rank_main(
    rank: int,
    size: int,
    backend: str,
    store_port: int,
    generation: int,
    conn: connection.Connection,
    parent_pid: int,
    logdir: str,
    turns: Turns,
) -> None:
    # Ctrl-C belongs to the driver: it tears the world down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report_faults_to(logdir, generation, rank)
    threading.Thread(target=_exit_when_parent_dies, args=(parent_pid, logdir), daemon=True).start()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch
    import torch.distributed as dist

    # Every ShardedTensor attribute access warns; ranks would drown the output.
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
    torch.set_num_threads(1)
    if backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    client = dist.TCPStore("127.0.0.1", store_port, is_master=False, timeout=timedelta(seconds=60))
    store = dist.PrefixStore(f"world{generation}", client)
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=size,
        device_id=device if backend == "nccl" else None,
    )
    install_context(rank, size, backend, device)
    conn.send_bytes(pickle.dumps(("ready", rank)))

    early = False  # this rank's answer to the last job it ran returned early
    while True:
        try:
            queued, payload = ungated(conn.recv_bytes())
        except (EOFError, OSError):
            _driver_gone(logdir)
        if queued and not turns.in_turn(rank, early):
            conn.send_bytes(SKIPPED)
            continue
        answer = execute(payload)
        if answer is None:  # shutdown request
            break
        early = answer.early
        conn.send_bytes(answer.data)

    # A barrier first: gloo can abort when a group is destroyed while a peer still talks.
    try:
        dist.barrier()
        dist.destroy_process_group()
    finally:
        os._exit(0)


# --------------------------------------------------------------------------- driver side

_live_worlds: weakref.WeakSet[World] = weakref.WeakSet()


@atexit.register
def _close_all_worlds() -> None:
    for world in list(_live_worlds):
        world.close()


def kill_all_worlds() -> None:
    """Kill every rank of every world of this process at once (a hard stop): SIGKILL first,
    for all of them, before waiting for any."""
    worlds = list(_live_worlds)
    for world in worlds:
        world.kill_ranks()
    for world in worlds:
        world.close(polite=False)


class World(JobDriver):
    """N spawned ranks sharing one process group, reused across jobs.

    ``run(fn, *args, **kwargs)`` calls ``fn`` on every rank and returns the list of results,
    rank by rank, or raises :class:`JobFailed`; ``submit`` / ``result`` split it in two
    (:class:`~conformance.world.protocol.JobDriver`). A result with a true ``may_desync``
    attribute is treated like an error for timing: the other ranks get ``error_grace``
    seconds. A hang, a dead rank or blocked ranks kill the world; it (re)starts lazily on the
    first job after construction or after such a failure.
    """

    consequence = "world restarts before the next job"
    max_in_flight = 3  # the case the ranks run and two queued behind it (see look_ahead)

    def __init__(
        self,
        size: int,
        backend: str = "gloo",
        *,
        job_timeout: float = DEFAULT_JOB_TIMEOUT,
        error_grace: float = DEFAULT_ERROR_GRACE,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        setup: tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...] = (),
    ) -> None:
        if not isinstance(size, int) or not 1 <= size <= MAX_WORLD_SIZE:
            raise ValueError(f"world size must be an integer from 1 to {MAX_WORLD_SIZE}, got {size!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "nccl":
            check_nccl_available(size)
        super().__init__(job_timeout, error_grace)
        self.size = size
        self.backend = backend
        self.start_timeout = start_timeout
        self.setup = setup  # jobs every (re)started world runs first, e.g. registering plug-ins
        self.restarts = 0
        self._generation = 0
        self._procs: list[Any] = []
        self._conns: list[connection.Connection] = []
        self._store: Any = None
        # The ranks' Turns: its shared memory comes from this process's multiprocessing heap,
        # which hands a freed block out again (Process.start drops its arguments), so the
        # world holds it until its ranks are gone.
        self._turns: Turns | None = None
        self._logdir = tempfile.mkdtemp(prefix="sdc-world-")  # ranks' stacks and stderr
        _live_worlds.add(self)

    # -- lifecycle

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> None:
        """Spawn the ranks and wait until every one has joined the process group."""
        if self._procs:
            return
        import torch.distributed as dist

        self._store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        if self._generation:
            self.restarts += 1
        self._generation += 1
        ctx = get_context("spawn")
        turns = self._turns = Turns(ctx, self.size)
        for rank in range(self.size):
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=_rank_main,
                args=(
                    rank,
                    self.size,
                    self.backend,
                    self._store.port,
                    self._generation,
                    child_conn,
                    os.getpid(),
                    self._logdir,
                    turns,
                ),
                name=f"conformance-rank{rank}",
                daemon=True,
            )
            proc.start()
            child_conn.close()
            self._procs.append(proc)
            self._conns.append(parent_conn)
        try:
            self._collect(
                JobClock(self._cpu_seconds, self.size, self.start_timeout, self.error_grace), "start"
            )
            for fn, args in self.setup:
                self._exchange(pickle.dumps((fn, args, {})), self.start_timeout, "start")
        except JobFailed as exc:
            self._kill()
            raise WorldUnavailable(f"world of {self.size} ({self.backend}) failed to start: {exc}") from None
        except BaseException:  # Ctrl-C while starting: no rank outlives it
            self._kill()
            raise

    def close(self, polite: bool = True) -> None:
        """Stop every rank (politely, then by force; by force at once unless ``polite``) and
        release the store."""
        if polite and self._procs and self.alive and not self._needs_health_check and not self._in_flight:
            try:
                for conn in self._conns:
                    conn.send_bytes(SHUTDOWN)
                deadline = time.monotonic() + 5.0
                for proc in self._procs:
                    proc.join(max(0.0, deadline - time.monotonic()))
            except (OSError, ValueError):
                pass
        self._kill()
        shutil.rmtree(self._logdir, ignore_errors=True)
        _live_worlds.discard(self)

    def restart(self) -> None:
        self._kill()
        self.start()

    def kill_ranks(self) -> None:
        """SIGKILL every live rank without waiting for it (see :func:`kill_all_worlds`)."""
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()

    def _kill(self) -> None:
        self.kill_ranks()
        for proc in self._procs:
            proc.join(10)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        self._store = None
        self._turns = None
        self._needs_health_check = False
        self._lose_in_flight()

    # -- the transport's side of the job protocol

    def _prepare(self) -> None:
        if self._procs and not self.alive:
            self._kill()
        if self._check_health() is not None:
            self._kill()  # the ranks disagree: a fresh world
        self.start()

    def _send(self, payload: bytes) -> None:
        for conn in self._conns:
            conn.send_bytes(payload)

    def _after_failure(self, exc: JobFailed, pending: PendingJob) -> None:
        if exc.kind == "error" and not exc.left_ranks_blocked:
            # Ranks that raised may have left a collective half-done on the others.
            self._needs_health_check = True
        else:
            self._kill()

    def _after_interrupt(self, exc: BaseException, pending: PendingJob) -> None:
        self._kill()  # the ranks are mid-job too

    def _wait(self, replies: Replies, clock: JobClock) -> None:
        waiting = {conn: rank for rank, conn in enumerate(self._conns)}
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        while waiting:
            remaining = clock.remaining(waiting.values())
            # past the deadline, one last look: replies that came while the driver was busy
            # elsewhere (drawing the next case, say) count, however late it collects them
            ready = connection.wait([*waiting, *sentinels], max(remaining, 0.0))
            if remaining <= 0 and not any(obj in waiting for obj in ready):
                return
            for obj in ready:
                if obj in waiting:
                    rank = waiting.pop(obj)
                    try:
                        data = obj.recv_bytes()
                    except (EOFError, OSError):
                        continue  # the rank died; its sentinel tells
                    if replies.add(rank, data):
                        # The others may be blocked in a collective this rank never joined.
                        clock.returned_early(waiting.values())
            for obj in ready:
                died = sentinels.get(obj)
                if died is not None and not replies.answered(died):
                    failures = {
                        r: RankFailure("RankDied", self._describe_exit(r), self._stderr_tail(r))
                        for r in self._dead_ranks()
                    }
                    raise JobFailed(
                        "crash", failures | replies.errors, self.consequence, results=replies.results
                    )

    def _cpu_seconds(self, rank: int) -> float | None:
        return cpu_seconds(self._procs[rank].pid)

    def _stacks(self, ranks: list[int]) -> dict[int, str]:
        """Where each of ``ranks`` is stuck: its threads' Python stacks (see conformance.faults)."""
        pids = {r: self._procs[r].pid for r in ranks if self._procs[r].is_alive()}
        return collect_stacks(pids, self._logdir, self._generation)

    def _stderr_tail(self, rank: int) -> str:
        tail = stderr_tail(self._logdir, self._generation, rank)
        return f"last lines on stderr:\n{tail}" if tail else ""

    def _dead_ranks(self) -> list[int]:
        time.sleep(0.05)  # let simultaneous deaths all register
        return [rank for rank, proc in enumerate(self._procs) if not proc.is_alive()]

    def _describe_exit(self, rank: int) -> str:
        code = self._procs[rank].exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"
