"""The torchrun transport: the world of a ``torchrun`` launch, driven from global rank 0.

Every rank joins the default process group from torchrun's environment
(``init_process_group(backend)``; NCCL: device ``LOCAL_RANK``) and the jobs use it (and the
meshes/groups of ``context()``) exactly as under the spawned
:class:`~conformance.world.spawn.World`. Control traffic never touches a process group: it
goes through torchrun's c10d store (:mod:`conformance.world.torchrun_rank`), so control
messages cannot interleave with, or desync, the jobs' collectives, and rank 0's main thread is
never stuck in a collective. Rank 0 runs its own share of each job in a dedicated thread and
polls the ``done/<n>`` counter (sub-millisecond at first, backing off to 5 ms). (A gloo
control group was rejected: a blocking ``broadcast_object_list`` on idle ranks would hit the
group timeout between jobs, and a timed-out gloo collective neither says which rank is missing
nor leaves the group usable.)

*Timeouts and failures* follow the job protocol (:mod:`conformance.world.protocol`). What
``World`` fixes by restarting cannot be fixed here -- a torchrun world cannot restart from
inside -- so a hang, blocked ranks, a dead rank or a failed health check *lose the world*. A
dead rank is one whose process is gone, for a rank on rank 0's host, or else one whose
heartbeat stopped for ``dead_after`` seconds (30 s; ``SDC_TORCHRUN_DEAD_AFTER``): a busy rank
on a loaded host can hold its heartbeat thread off the GIL for seconds, see
:mod:`conformance.world.torchrun_rank`. A silent rank's CPU time (is it still computing?) comes
from ``/proc`` on this host and from its watchdog otherwise. A rank dying on rank 0's own
node makes torchrun SIGTERM rank 0 within its monitor interval, which rank 0 turns into
``JobFailed("crash")`` (naming local ranks whose process is gone) in a job, or into
:class:`WorldLost` between jobs. The failing
job raises its ``JobFailed`` (so the case is reported), a report goes to stderr at once, and
every later job raises :class:`WorldLost`, a ``KeyboardInterrupt``: it passes through
Hypothesis without shrinking and ends pytest like Ctrl-C. Rank 0 then writes ``stop`` to the
store; each other rank's watchdog exits (status 1 if it was stuck in a job, else 0). A clean
end sends a shutdown job; every rank acknowledges, meets in a barrier and destroys its
process group. Entry points: :mod:`conformance.world.torchrun_main`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import reprlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from conformance.faults import thread_stack
from conformance.progress import cpu_seconds
from conformance.world import protocol
from conformance.world.protocol import JobDriver, JobFailed, RankFailure, WorldUnavailable, execute
from conformance.world.torchrun_rank import EARLY, TorchrunMember, local_pid, process_alive, say

DEAD_AFTER = float(os.environ.get("SDC_TORCHRUN_DEAD_AFTER", "30"))
SHUTDOWN_TIMEOUT = 30.0
STACK_WAIT = 3.0  # seconds to wait for silent ranks' watchdogs to report their stacks


class WorldLost(KeyboardInterrupt):
    """The torchrun world can no longer run jobs. A ``KeyboardInterrupt`` so that it passes
    through Hypothesis (no shrinking on a dead world) and ends the pytest session."""


class TorchrunWorld(JobDriver):
    """The world of a torchrun job, driven from global rank 0; the interface of ``World``.

    ``run(fn, *args, **kwargs)`` (or ``submit`` then ``result``) calls ``fn`` on every rank and
    returns the results in rank order, or raises :class:`JobFailed` (kinds error, hang, crash).
    A hang, a crash, blocked ranks or a failed health check lose the world: every later job
    raises :class:`WorldLost`.
    """

    consequence = "a torchrun world cannot restart, so the run stops"

    def __init__(
        self,
        backend: str | None = None,
        *,
        job_timeout: float = protocol.DEFAULT_JOB_TIMEOUT,
        error_grace: float = protocol.DEFAULT_ERROR_GRACE,
        start_timeout: float = 300.0,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        if "RANK" in os.environ and os.environ["RANK"] != "0":
            raise RuntimeError("TorchrunWorld drives from global rank 0; other ranks call serve_forever()")
        super().__init__(job_timeout, error_grace)
        self.size = int(os.environ.get("WORLD_SIZE", "0"))
        self.backend = backend or os.environ.get("SDC_BACKEND", "gloo")
        self.start_timeout = start_timeout
        self.dead_after = dead_after
        self.restarts = 0  # never: a torchrun world cannot restart
        self.lost: str | None = None  # why the world can no longer run jobs
        self.set_up = False  # the harness's setup jobs (warm-up, placements) have run
        self._member: TorchrunMember | None = None
        self._next = 1  # the number of the next job
        self._job = 0  # the number of the job being collected
        self._job_open = False  # a job has been sent and not yet judged
        self._terminated = False
        self._closed = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._own: dict[int, protocol.Answer | None] = {}
        self._own_done = threading.Condition()
        self._beats: dict[int, tuple[int, float]] = {}
        self._local: dict[int, int] = {}  # rank -> process id, for the other ranks on this host
        self._own_tid: int | None = None  # native id of the thread running rank 0's share
        self._own_ident: int | None = None  # and its threading ident

    # -- lifecycle

    @property
    def _m(self) -> TorchrunMember:
        assert self._member is not None, "the torchrun world has not started"
        return self._member

    @property
    def alive(self) -> bool:
        return self._member is not None and self.lost is None and not self._closed

    def start(self) -> None:
        """Join the process group and wait until every rank has joined the control channel."""
        if self._member is not None:
            return
        self._member = member = TorchrunMember(self.backend)
        self.size = member.size
        deadline = time.monotonic() + self.start_timeout
        while (joined := member.store.add("joined", 0)) < self.size:
            if time.monotonic() > deadline:
                raise WorldUnavailable(
                    f"only {joined} of {self.size} torchrun ranks joined within {self.start_timeout:g}s"
                )
            time.sleep(0.01)
        self._local = {r: pid for r in range(1, self.size) if (pid := local_pid(member.store, r)) is not None}
        threading.Thread(target=self._own_loop, daemon=True, name="sdc-torchrun-rank0-jobs").start()

    def _own_loop(self) -> None:
        """Rank 0's share of every job, off the main thread so that it can time out."""
        self._own_tid = threading.get_native_id()
        self._own_ident = threading.get_ident()
        if self.backend == "nccl":
            import torch

            torch.cuda.set_device(self._m.device)
        while True:
            job, payload = self._jobs.get()
            done = execute(payload)
            with self._own_done:
                self._own[job] = done
                self._own_done.notify_all()

    def close(self) -> None:
        """Stop the other ranks: politely when the world is healthy, by ``stop`` otherwise."""
        if self._closed or self._member is None:
            self._closed = True
            return
        self._closed = True
        member, store = self._member, self._m.store
        if self.lost is None and not self._job_open:
            job = self._next
            self._next += 1
            store.set(f"job/{job}", protocol.SHUTDOWN)  # type: ignore[arg-type]  # stubs say str; bytes work
            deadline = time.monotonic() + SHUTDOWN_TIMEOUT
            while store.add(f"done/{job}", 0) < self.size - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            if store.add(f"done/{job}", 0) >= self.size - 1:
                member.leave()
                return
            self.lost = f"ranks did not acknowledge the shutdown within {SHUTDOWN_TIMEOUT:g}s"
        member.closing = True
        with contextlib.suppress(Exception):  # the store may be gone already
            store.set("stop", self.lost or "rank 0 stopped mid-job")

    # -- the transport's side of the job protocol

    def _prepare(self) -> None:
        if self.lost is not None:
            raise WorldLost(f"torchrun world lost: {self.lost}")
        if self._closed:
            raise RuntimeError("the torchrun world is closed")
        self.start()
        failed = self._check_health()
        if failed is not None:
            self._lose(failed, f"the health check after job {self._next - 2}")
            raise WorldLost(f"torchrun world lost: {self.lost}") from None

    def _send(self, payload: bytes) -> None:
        job = self._job = self._next
        self._next += 1
        self._job_open = True
        self._m.store.set(f"job/{job}", payload)  # type: ignore[arg-type]  # stubs say str; bytes work
        self._jobs.put((job, payload))

    def _after_failure(self, exc: JobFailed, pending: protocol.PendingJob) -> None:
        if exc.kind == "error" and not exc.left_ranks_blocked:
            self._needs_health_check = True
        else:
            self._lose(exc, describe_job(pending.fn, pending.args))

    def _after_interrupt(self, exc: BaseException, pending: protocol.PendingJob) -> None:
        if self.lost is None:
            what = describe_job(pending.fn, pending.args)
            self.lost = f"job {self._job} ({what}) interrupted by {type(exc).__name__}"

    def _lose(self, exc: JobFailed, what: str) -> None:
        self.lost = f"job {self._job} ({what}): {exc}"
        stacks = "".join(
            f"rank {rank}: {failure}\n{failure.traceback}\n"
            for rank, failure in exc.failures.items()
            if failure.traceback
        )
        say(
            "\n==== state-dict-conformance: torchrun world lost ====\n"
            f"{self.lost}\n{stacks}"
            "A torchrun world cannot restart from inside, so the run stops here.\n"
        )

    def _collect(self, clock: protocol.JobClock, what: str = "job") -> list[Any]:
        try:
            return super()._collect(clock, what)
        finally:
            self._job_open = False

    def _wait(self, replies: protocol.Replies, clock: protocol.JobClock) -> None:
        store, job = self._m.store, self._job
        grace_started = False
        next_beat_check = time.monotonic() + 1.0
        pause = 0.0002
        while True:
            mine = self._own.get(job)
            value = store.add(f"done/{job}", 0)
            count = (value % EARLY) + (mine is not None)
            early = (value // EARLY) + bool(mine and mine.early)
            if count == self.size:
                break
            now = time.monotonic()
            if early and not grace_started:
                grace_started = True
                clock.returned_early(self._silent(job))
            if self._terminated:
                self._raise_terminated(job)
            if now >= next_beat_check:
                next_beat_check = now + 1.0
                self._check_beats(job)
            if clock.remaining(self._silent(job)) <= 0:
                break
            with self._own_done:
                if job not in self._own:
                    self._own_done.wait(pause)
            pause = min(pause * 2, 0.005)
        self._read_answers(job, replies, all_done=count == self.size)

    def _read_answers(self, job: int, replies: protocol.Replies, all_done: bool) -> None:
        store = self._m.store
        answered = list(range(self.size)) if all_done else self._answered(job)
        others = [r for r in answered if r != 0]
        keys = [f"result/{job}/{r}" for r in others]
        for rank, data in zip(others, store.multi_get(keys) if keys else [], strict=True):
            replies.add(rank, data)
        if 0 in answered:
            own = self._own.pop(job)
            assert own is not None  # only a shutdown job gives None, and rank 0 never runs one
            replies.add(0, own.data)
        if len(answered) == self.size:
            for key in [*keys, f"job/{job}", f"done/{job}"]:
                store.delete_key(key)

    def _answered(self, job: int) -> list[int]:
        store = self._m.store
        others = [r for r in range(1, self.size) if store.check([f"result/{job}/{r}"])]
        return ([0] if job in self._own else []) + others

    def _silent(self, job: int) -> Iterator[int]:
        """The ranks that have not answered ``job``, asked of the store only when iterated."""
        answered = self._answered(job)
        yield from (r for r in range(self.size) if r not in answered)

    def _cpu_seconds(self, rank: int) -> float | None:
        """CPU time of ``rank``'s job execution: rank 0's job thread here, the others' processes
        as their watchdog last published it."""
        if rank == 0:
            return None if self._own_tid is None else cpu_seconds(os.getpid(), self._own_tid)
        if rank in self._local:
            return cpu_seconds(self._local[rank])
        store, key = self._m.store, f"cpu/{rank}"
        try:
            return float(store.get(key)) if store.check([key]) else None
        except Exception:
            return None

    def _stacks(self, ranks: list[int]) -> dict[int, str]:
        """Where each of ``ranks`` is stuck in the current job: rank 0's job thread from here,
        the others as their watchdog reports it over the store."""
        store, job = self._m.store, self._job
        store.set(f"dump/{job}", "1")
        found = {0: thread_stack(self._own_ident)} if 0 in ranks and self._own_ident is not None else {}
        deadline = time.monotonic() + STACK_WAIT
        while time.monotonic() < deadline:
            for rank in ranks:
                if rank not in found and store.check([f"stack/{job}/{rank}"]):
                    found[rank] = store.get(f"stack/{job}/{rank}").decode()
            if all(r in found for r in ranks):
                break
            time.sleep(0.1)
        return found

    def _check_beats(self, job: int) -> None:
        """Raise JobFailed("crash") for unanswered ranks that are gone: by their process on this
        host, by a heartbeat stopped for ``dead_after`` seconds on other hosts."""
        now = time.monotonic()
        pending = list(self._silent(job))
        dead = self._gone_here(pending)
        remote = [r for r in pending if r not in self._local]
        beats = self._m.store.multi_get([f"beat/{r}" for r in remote]) if remote else []
        for rank, raw in zip(remote, beats, strict=True):
            value = int(raw)
            last = self._beats.get(rank)
            if last is None or last[0] != value:
                self._beats[rank] = (value, now)
            elif now - last[1] > self.dead_after:
                dead[rank] = RankFailure(
                    "RankDied", f"no heartbeat for {now - last[1]:.0f}s (process or node gone)"
                )
        if dead:
            raise JobFailed("crash", dead, self.consequence)

    def _gone_here(self, ranks: list[int]) -> dict[int, RankFailure]:
        """Those of ``ranks`` on this host whose process is gone."""
        host = socket.gethostname()
        return {
            r: RankFailure("RankDied", f"process {self._local[r]} on {host} is gone")
            for r in ranks
            if r in self._local and not process_alive(self._local[r])
        }

    def _raise_terminated(self, job: int) -> None:
        pending = list(self._silent(job))
        failures = self._gone_here(pending)
        if not failures:
            failures = {
                r: RankFailure("Stopped", "torchrun stopped the world before this rank answered")
                for r in pending
            }
        raise JobFailed(
            "crash",
            failures,
            "torchrun sent SIGTERM: a rank died (torchrun's report names it); the run stops",
        )

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """torchrun stops the node's ranks with SIGTERM when one of them dies."""
        if self._closed:
            return
        if self._job_open:
            self._terminated = True
            return
        self.lost = (
            self.lost or "torchrun sent SIGTERM between jobs: a rank died (torchrun's report names it)"
        )
        raise WorldLost(f"torchrun world lost: {self.lost}")


def describe_job(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """One line naming a job for a report: the function and its case, with the replay command."""
    text = f"{getattr(fn, '__qualname__', fn)}"
    try:
        if args and hasattr(args[0], "describe"):
            text += f": {args[0].describe()}"
            if len(args) > 1 and isinstance(args[1], str):
                from conformance.case import replay_command

                text += f"; replay: {replay_command(args[0], args[1])}"
        else:
            text += "(" + ", ".join(reprlib.repr(a) for a in args) + ")"
    except Exception:
        pass
    return text
