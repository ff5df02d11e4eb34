"""The suite on a world launched by ``torchrun``: rank 0 drives Hypothesis, every rank executes.

Usage (every node runs the same line; extra arguments go to pytest on rank 0)::

    torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m conformance.torchrun -- conformance/suite -p no:cacheprovider
    torchrun --standalone --nproc-per-node 2 -m conformance.torchrun selfcheck

``run_under_torchrun(pytest_args)`` is the entry point: global rank 0 runs pytest with
``SDC_LAUNCHER=torchrun`` (``Harness.world(size)`` then returns the one
:class:`TorchrunWorld`), the other ranks run :func:`serve_forever`.

Design
------
*Control channel: the c10d store, not a process group.* Every rank joins the default process
group from torchrun's environment (``init_process_group(backend)``; NCCL: device
``LOCAL_RANK``) and the jobs use it (and the meshes/groups of ``context()``) exactly as under
the spawned :class:`~conformance.world.World`. Control traffic never touches a process group:
rank 0 puts the pickled job under ``job/<n>`` in the default group's TCPStore (under a private
prefix), each rank blocks in ``store.wait`` for it (no polling, no timeout while idle, however
long Hypothesis thinks between jobs), runs it, puts its pickled ``("ok"|"err", value)`` under
``result/<n>/<rank>`` and bumps the counter ``done/<n>``. Rank 0 runs its own share in a
dedicated thread and polls that counter (sub-millisecond at first, backing off to 5 ms). So
control messages cannot interleave with, or desync, the jobs' collectives on any stream, and
rank 0's main thread is never stuck in a collective. (A gloo control group was rejected: a
blocking ``broadcast_object_list`` on idle ranks would hit the group timeout between jobs, and a
timed-out gloo collective neither says which rank is missing nor leaves the group usable.)

*Timeouts and failures.* As in ``World``: a rank that raises comes back as its
:class:`RankFailure` (``JobFailed("error")``); once a rank has raised or returned a result with
``may_desync``, the others get ``error_grace`` seconds; the next job is preceded by a health
check (an all-reduce on the default group and every cached mesh group). What ``World`` fixes
by restarting cannot be fixed here -- a torchrun world cannot restart from inside -- so these
*lose the world*:

- a job not answered by every rank within ``job_timeout``: ``JobFailed("hang")`` naming the
  silent ranks;
- ranks still blocked after another rank raised: ``JobFailed("error")`` with ``Blocked`` ranks;
- a dead rank: ``JobFailed("crash")``. Every rank bumps ``beat/<rank>`` every 0.5 s from a
  watchdog thread on its own store connection; a rank silent for ``dead_after`` seconds
  (10 s; ``SDC_TORCHRUN_DEAD_AFTER``) is dead (another node's process or the node itself).
  A rank dying on rank 0's own node makes torchrun SIGTERM rank 0 within its monitor interval;
  rank 0 turns that into ``JobFailed("crash")`` (naming local ranks whose process is gone) in
  a job, or into :class:`WorldLost` between jobs;
- a failed health check.

The failing ``run`` raises its ``JobFailed`` (so the case is reported), a report goes to
stderr at once, and every later ``run`` raises :class:`WorldLost`, a ``KeyboardInterrupt``:
it passes through Hypothesis without shrinking and ends pytest like Ctrl-C, so the run stops
with pytest's summary and ``run_under_torchrun`` returns 1. Rank 0 then writes ``stop`` to
the store; each other rank's watchdog exits (status 1 if it was stuck in a job, else 0).

*Rank 0 dying.* Other ranks never block forever: their watchdog exits (status 3) when the
store is unreachable (torchrun's agent on rank 0's node, which hosts it, has torn down) or
when rank 0's heartbeat has not moved for 30 s. A clean end sends a shutdown job; every rank
acknowledges, meets in a barrier and destroys its process group.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import reprlib
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import conformance.world as _world
from conformance import wire
from conformance.faults import own_stacks, thread_stack
from conformance.progress import ProgressWatch, cpu_seconds
from conformance.world import (
    BACKENDS,
    DEFAULT_ERROR_GRACE,
    DEFAULT_JOB_TIMEOUT,
    SLOW_ALLOWANCE_FACTOR,
    JobFailed,
    RankFailure,
    WorldUnavailable,
    _failure_of,
    _health_check,
    _may_desync,
)

LAUNCHER_ENV = "SDC_LAUNCHER"
HEARTBEAT_INTERVAL = 0.5
DEAD_AFTER = float(os.environ.get("SDC_TORCHRUN_DEAD_AFTER", "10"))
DRIVER_LOST_AFTER = 30.0
SHUTDOWN_TIMEOUT = 30.0
_EARLY = 1 << 20  # added to done/<n> by a rank that raised or may have desynced
_FOREVER = timedelta(days=3650)
_SHUTDOWN = pickle.dumps((None, (), {}))


class WorldLost(KeyboardInterrupt):
    """The torchrun world can no longer run jobs. A ``KeyboardInterrupt`` so that it passes
    through Hypothesis (no shrinking on a dead world) and ends the pytest session."""


def under_torchrun() -> bool:
    return os.environ.get(LAUNCHER_ENV) == "torchrun"


# --------------------------------------------------------------------------- every rank


class _Rank:
    """This process's membership of the torchrun world: process group, store, watchdog."""

    def __init__(self, backend: str) -> None:
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise WorldUnavailable(
                f"not started by torchrun ({', '.join(missing)} unset): use "
                "`torchrun --nproc-per-node N -m conformance.torchrun ...`"
            )
        if backend not in BACKENDS:
            raise WorldUnavailable(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        import torch
        import torch.distributed as dist

        warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
        self.rank = int(os.environ["RANK"])
        self.size = int(os.environ["WORLD_SIZE"])
        self.backend = backend
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise WorldUnavailable("backend nccl needs CUDA GPUs; this node has none (use gloo)")
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend, device_id=self.device if backend == "nccl" else None)
        _world.install_context(self.rank, self.size, backend, self.device)
        from torch.distributed.distributed_c10d import _get_default_store

        prefix = f"sdc-torchrun/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.store = dist.PrefixStore(prefix, _get_default_store())
        self.busy = 0  # the job this rank is executing, 0 when idle
        self.closing = False
        self.store.set(f"where/{self.rank}", f"{socket.gethostname()}:{os.getpid()}")
        self.store.add(f"beat/{self.rank}", 1)
        self.store.add("joined", 1)
        threading.Thread(
            target=self._watchdog,
            args=(self.store.clone(),),  # type: ignore[attr-defined]  # missing from torch's stubs
            daemon=True,
            name="sdc-torchrun-watchdog",
        ).start()

    def _watchdog(self, store: Any) -> None:
        """Heartbeat; on ranks other than 0 also: exit on ``stop`` or when rank 0 is gone."""
        last_beat0, changed, errors, dumped = -1, time.monotonic(), 0, 0
        while not self.closing:
            try:
                store.add(f"beat/{self.rank}", 1)
                store.set(f"cpu/{self.rank}", repr(time.process_time()))
                busy = self.busy
                if busy and busy != dumped and store.check([f"dump/{busy}"]):
                    store.set(f"stack/{busy}/{self.rank}", own_stacks())  # where this rank is stuck
                    dumped = busy
                if self.rank != 0:
                    if store.check(["stop"]):
                        reason = store.get("stop").decode()
                        if self.closing:
                            return
                        if self.busy:
                            _say(
                                f"rank {self.rank}: job {self.busy} still running when the run stopped ({reason})"
                            )
                        os._exit(1 if self.busy else 0)
                    beat0 = store.add("beat/0", 0)
                    if beat0 != last_beat0:
                        last_beat0, changed = beat0, time.monotonic()
                    elif time.monotonic() - changed > DRIVER_LOST_AFTER:
                        _say(
                            f"rank {self.rank}: no heartbeat from rank 0 for {DRIVER_LOST_AFTER:g}s; exiting"
                        )
                        os._exit(3)
                errors = 0
            except Exception as exc:
                if self.closing:
                    return
                errors += 1
                if errors >= 3 and self.rank != 0:
                    _say(
                        f"rank {self.rank}: the torchrun store is unreachable ({exc}); rank 0 is gone, exiting"
                    )
                    os._exit(3)
            time.sleep(HEARTBEAT_INTERVAL)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _execute(payload: bytes) -> tuple[bytes, bool] | None:
    """Run one pickled job on this rank: (pickled reply, returned early?), None for shutdown."""
    try:
        fn, args, kwargs = pickle.loads(payload)
    except Exception as exc:
        reply: tuple[str, Any] = ("err", _failure_of(exc))
    else:
        if fn is None:
            return None
        try:
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:
            reply = ("err", _failure_of(exc))
    try:
        data = wire.dumps(reply)
    except Exception as exc:
        reply = ("err", _failure_of(exc, "result could not be pickled: "))
        data = wire.dumps(reply)
    return data, reply[0] == "err" or _may_desync(reply[1])


def _finish(member: _Rank) -> None:
    """Clean end: a barrier (gloo can abort when a group is destroyed while a peer talks), then
    destroy the process group."""
    import torch.distributed as dist

    member.closing = True
    dist.barrier()
    dist.destroy_process_group()


def serve_forever(backend: str | None = None) -> int:
    """Ranks other than 0: receive a job, run it, send the result back, until shutdown."""
    member = _Rank(backend or os.environ.get("SDC_BACKEND", "gloo"))
    if member.rank == 0:
        raise RuntimeError("serve_forever() is for ranks other than 0; rank 0 drives a TorchrunWorld")
    store, job = member.store, 1
    while True:
        key = f"job/{job}"
        try:
            store.wait([key], _FOREVER)
            payload = store.get(key)
        except Exception as exc:
            if member.closing:
                return 0
            _say(f"rank {member.rank}: lost the torchrun store ({exc}); exiting")
            return 3
        member.busy = job
        done = _execute(payload)
        if done is None:  # shutdown: acknowledge, then meet the others
            member.closing = True
            store.add(f"done/{job}", 1)
            _finish(member)
            return 0
        data, early = done
        store.set(f"result/{job}/{member.rank}", data)  # type: ignore[arg-type]  # stubs say str; bytes work
        store.add(f"done/{job}", 1 + (_EARLY if early else 0))
        member.busy = 0
        job += 1


# --------------------------------------------------------------------------- rank 0


class TorchrunWorld:
    """The world of a torchrun job, driven from global rank 0; the interface of ``World``.

    ``run(fn, *args, **kwargs)`` calls ``fn`` on every rank and returns the results in rank
    order, or raises :class:`JobFailed` (kinds error, hang, crash). A hang, a crash, blocked
    ranks or a failed health check lose the world: every later ``run`` raises
    :class:`WorldLost`.
    """

    def __init__(
        self,
        backend: str | None = None,
        *,
        job_timeout: float = DEFAULT_JOB_TIMEOUT,
        error_grace: float = DEFAULT_ERROR_GRACE,
        start_timeout: float = 300.0,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        if "RANK" in os.environ and os.environ["RANK"] != "0":
            raise RuntimeError("TorchrunWorld drives from global rank 0; other ranks call serve_forever()")
        self.size = int(os.environ.get("WORLD_SIZE", "0"))
        self.backend = backend or os.environ.get("SDC_BACKEND", "gloo")
        self.job_timeout = job_timeout
        self.error_grace = error_grace
        self.start_timeout = start_timeout
        self.dead_after = dead_after
        self.restarts = 0  # never: a torchrun world cannot restart
        self.jobs_run = 0
        self.lost: str | None = None  # why the world can no longer run jobs
        self._member: _Rank | None = None
        self._next = 1
        self._needs_health_check = False
        self._in_job = False
        self._terminated = False
        self._closed = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._own: dict[int, tuple[bytes, bool] | None] = {}
        self._own_done = threading.Condition()
        self._beats: dict[int, tuple[int, float]] = {}
        self._set_up = False  # the harness's setup jobs (warm-up, placements) have run
        self._own_tid: int | None = None  # native id of the thread running rank 0's share
        self._own_ident: int | None = None  # and its threading ident

    # -- lifecycle

    @property
    def _m(self) -> _Rank:
        assert self._member is not None, "the torchrun world has not started"
        return self._member

    @property
    def alive(self) -> bool:
        return self._member is not None and self.lost is None and not self._closed

    def start(self) -> None:
        """Join the process group and wait until every rank has joined the control channel."""
        if self._member is not None:
            return
        self._member = member = _Rank(self.backend)
        self.size = member.size
        deadline = time.monotonic() + self.start_timeout
        while (joined := member.store.add("joined", 0)) < self.size:
            if time.monotonic() > deadline:
                raise WorldUnavailable(
                    f"only {joined} of {self.size} torchrun ranks joined within {self.start_timeout:g}s"
                )
            time.sleep(0.01)
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
            done = _execute(payload)
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
        if self.lost is None and not self._in_job:
            job = self._next
            self._next += 1
            store.set(f"job/{job}", _SHUTDOWN)  # type: ignore[arg-type]  # stubs say str; bytes work
            deadline = time.monotonic() + SHUTDOWN_TIMEOUT
            while store.add(f"done/{job}", 0) < self.size - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            if store.add(f"done/{job}", 0) >= self.size - 1:
                _finish(member)
                return
            self.lost = f"ranks did not acknowledge the shutdown within {SHUTDOWN_TIMEOUT:g}s"
        member.closing = True
        with contextlib.suppress(Exception):  # the store may be gone already
            store.set("stop", self.lost or "rank 0 stopped mid-job")

    def __enter__(self) -> TorchrunWorld:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank; results in rank order."""
        if self.lost is not None:
            raise WorldLost(f"torchrun world lost: {self.lost}")
        if self._closed:
            raise RuntimeError("the torchrun world is closed")
        payload = pickle.dumps((fn, args, kwargs))
        self.start()
        if self._needs_health_check:
            self._needs_health_check = False
            try:
                self._dispatch(pickle.dumps((_health_check, (), {})), min(self.job_timeout, 10.0))
            except JobFailed as exc:
                self._lose(exc, f"the health check after job {self._next - 2}")
                raise WorldLost(f"torchrun world lost: {self.lost}") from None
        what = _describe_job(fn, args)
        try:
            results = self._dispatch(payload, self.job_timeout)
        except JobFailed as exc:
            if exc.kind == "error" and not any(f.type_name == "Blocked" for f in exc.failures.values()):
                self._needs_health_check = True
            else:
                self._lose(exc, what)
            raise
        except BaseException as exc:  # Ctrl-C or another driver-side interruption mid-job
            if self.lost is None:
                self.lost = f"job {self._next - 1} ({what}) interrupted by {type(exc).__name__}"
            raise
        if any(_may_desync(r) for r in results):
            self._needs_health_check = True
        return results

    def _lose(self, exc: JobFailed, what: str) -> None:
        self.lost = f"job {self._next - 1} ({what}): {exc}"
        stacks = "".join(
            f"rank {rank}: {failure}\n{failure.traceback}\n"
            for rank, failure in exc.failures.items()
            if failure.traceback
        )
        _say(
            "\n==== state-dict-conformance: torchrun world lost ====\n"
            f"{self.lost}\n{stacks}"
            "A torchrun world cannot restart from inside, so the run stops here.\n"
        )

    def _dispatch(self, payload: bytes, timeout: float) -> list[Any]:
        store = self._m.store
        job = self._next
        self._next += 1
        self.jobs_run += 1
        self._in_job = True
        store.set(f"job/{job}", payload)  # type: ignore[arg-type]  # stubs say str; bytes work
        self._jobs.put((job, payload))
        watch = ProgressWatch(self._cpu_seconds, range(self.size), cpu_budget=SLOW_ALLOWANCE_FACTOR * timeout)
        deadline = time.monotonic() + timeout
        grace_started = False
        next_beat_check = time.monotonic() + 1.0
        pause = 0.0002
        try:
            while True:
                mine = self._own.get(job)
                value = store.add(f"done/{job}", 0)
                count = (value % _EARLY) + (mine is not None)
                early = (value // _EARLY) + bool(mine and mine[1])
                if count == self.size:
                    break
                now = time.monotonic()
                if early and not grace_started:
                    grace_started = True
                    deadline = min(deadline, now + self.error_grace)
                    watch.note(r for r in range(self.size) if r not in self._answered(job))
                if self._terminated:
                    self._raise_terminated(job)
                if now >= next_beat_check:
                    next_beat_check = now + 1.0
                    self._check_beats(job)
                if now >= deadline:
                    # Wait on only while a silent rank is still computing (slow is not hung).
                    pending = [r for r in range(self.size) if r not in self._answered(job)]
                    if watch.busy(pending):
                        deadline = now + watch.window
                        continue
                    break
                with self._own_done:
                    if job not in self._own:
                        self._own_done.wait(pause)
                pause = min(pause * 2, 0.005)
            return self._collect(job, timeout, all_done=count == self.size)
        finally:
            self._in_job = False

    def _cpu_seconds(self, rank: int) -> float | None:
        """CPU time of ``rank``'s job execution: rank 0's job thread here, the others' processes
        as their watchdog last published it."""
        if rank == 0:
            return None if self._own_tid is None else cpu_seconds(os.getpid(), self._own_tid)
        store, key = self._m.store, f"cpu/{rank}"
        try:
            return float(store.get(key)) if store.check([key]) else None
        except Exception:
            return None

    def _answered(self, job: int) -> list[int]:
        store = self._m.store
        others = [r for r in range(1, self.size) if store.check([f"result/{job}/{r}"])]
        return ([0] if job in self._own else []) + others

    def _collect(self, job: int, timeout: float, all_done: bool) -> list[Any]:
        store = self._m.store
        answered = list(range(self.size)) if all_done else self._answered(job)
        keys = [f"result/{job}/{r}" for r in answered if r != 0]
        blobs = dict(zip([r for r in answered if r != 0], store.multi_get(keys) if keys else [], strict=True))
        if 0 in answered:
            own = self._own.pop(job)
            assert own is not None  # only a shutdown job gives None, and rank 0 never runs one
            blobs[0] = own[0]
        results: dict[int, Any] = {}
        errors: dict[int, RankFailure] = {}
        for rank, data in blobs.items():
            try:
                status, value = pickle.loads(data)
            except Exception as exc:
                status, value = "err", _failure_of(exc, "result could not be unpickled by the driver: ")
            (errors if status == "err" else results)[rank] = value
        waiting = [r for r in range(self.size) if r not in blobs]
        if not waiting:
            for key in [*keys, f"job/{job}", f"done/{job}"]:
                store.delete_key(key)
        returned_early = sorted(errors) + [r for r, v in results.items() if _may_desync(v)]
        if waiting and returned_early:
            early = ", ".join(map(str, returned_early))
            for rank in waiting:
                errors[rank] = RankFailure(
                    "Blocked", f"still blocked in a collective after rank(s) {early} returned"
                )
            detail = (
                f"rank(s) {', '.join(map(str, waiting))} were still blocked; "
                "a torchrun world cannot restart, so the run stops"
            )
            raise JobFailed("error", errors, detail, results=results)
        if errors:
            raise JobFailed("error", errors, results=results)
        if waiting:
            stacks = self._stacks(job, waiting)
            raise JobFailed(
                "hang",
                {
                    r: RankFailure("Timeout", f"no answer within {timeout:g}s", stacks.get(r, ""))
                    for r in waiting
                },
                "job timed out; a torchrun world cannot restart, so the run stops",
                results=results,
            )
        return [results[r] for r in range(self.size)]

    def _stacks(self, job: int, ranks: list[int], wait: float = 3.0) -> dict[int, str]:
        """Where each of ``ranks`` is stuck in ``job``: rank 0's job thread from here, the
        others as their watchdog reports it over the store."""
        store = self._m.store
        store.set(f"dump/{job}", "1")
        found = {0: thread_stack(self._own_ident)} if 0 in ranks and self._own_ident is not None else {}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for rank in ranks:
                if rank not in found and store.check([f"stack/{job}/{rank}"]):
                    found[rank] = store.get(f"stack/{job}/{rank}").decode()
            if all(r in found for r in ranks):
                break
            time.sleep(0.1)
        return found

    def _check_beats(self, job: int) -> None:
        """Raise JobFailed("crash") for unanswered ranks whose heartbeat stopped."""
        store = self._m.store
        now = time.monotonic()
        pending = [r for r in range(self.size) if r not in self._answered(job)]
        if not pending:
            return
        beats = store.multi_get([f"beat/{r}" for r in pending])
        dead = {}
        for rank, raw in zip(pending, beats, strict=True):
            value = int(raw)
            last = self._beats.get(rank)
            if last is None or last[0] != value:
                self._beats[rank] = (value, now)
            elif now - last[1] > self.dead_after:
                dead[rank] = RankFailure(
                    "RankDied", f"no heartbeat for {now - last[1]:.0f}s (process or node gone)"
                )
        if dead:
            raise JobFailed("crash", dead, "a torchrun world cannot restart, so the run stops")

    def _raise_terminated(self, job: int) -> None:
        pending = [r for r in range(self.size) if r not in self._answered(job)]
        failures = {}
        host = socket.gethostname()
        for rank in pending:
            try:
                where, pid = self._m.store.get(f"where/{rank}").decode().rsplit(":", 1)
            except Exception:
                continue
            if where == host and not _process_alive(int(pid)):
                failures[rank] = RankFailure("RankDied", f"process {pid} on {host} is gone")
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
        if self._in_job:
            self._terminated = True
            return
        self.lost = (
            self.lost or "torchrun sent SIGTERM between jobs: a rank died (torchrun's report names it)"
        )
        raise WorldLost(f"torchrun world lost: {self.lost}")


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _describe_job(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
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


# --------------------------------------------------------------------------- harness hook

_driver: TorchrunWorld | None = None


def harness_world(harness: Any, size: int) -> TorchrunWorld:
    """What ``Harness.world(size)`` returns under ``SDC_LAUNCHER=torchrun``: the one world."""
    world = _driver
    if world is None:
        raise WorldUnavailable(
            "SDC_LAUNCHER=torchrun but no torchrun world is running here: start the suite with "
            "`torchrun ... -m conformance.torchrun -- <pytest args>` (rank 0 drives)"
        )
    if size != world.size:
        raise WorldUnavailable(
            f"the torchrun world has WORLD_SIZE={world.size} ranks but a world of {size} was asked "
            f"for: run with --world-sizes {world.size} (SDC_WORLD_SIZES={world.size})"
        )
    config = harness.config
    if config.backend != world.backend:
        raise WorldUnavailable(
            f"the torchrun world uses backend {world.backend} but the suite asked for {config.backend}"
        )
    if not world._set_up:
        # setup (imports, the first meshes) gets a world start's allowance, not a case's
        world.job_timeout = max(config.case_timeout, _world.DEFAULT_START_TIMEOUT)
        for fn, args in harness.setup_jobs():
            world.run(fn, *args)
        world._set_up = True
    world.job_timeout = config.case_timeout
    return world


# --------------------------------------------------------------------------- entry points


def run_under_torchrun(pytest_args: list[str], plugins: list[Any] | None = None) -> int:
    """Rank 0: pytest on the torchrun world, then shut the other ranks down; returns pytest's
    status (1 if the world was lost). Other ranks: serve jobs until shutdown; returns 0."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        _say(
            "state-dict-conformance: --launcher torchrun must itself be started by torchrun, e.g. "
            "`torchrun --nproc-per-node 2 -m conformance run --launcher torchrun`"
        )
        return 2
    os.environ[LAUNCHER_ENV] = "torchrun"
    os.environ.setdefault("SDC_WORLD_SIZES", os.environ["WORLD_SIZE"])
    backend = os.environ.setdefault("SDC_BACKEND", "gloo")
    if os.environ["RANK"] != "0":
        return serve_forever(backend)
    return _drive(lambda: _pytest(pytest_args, plugins), backend)


def _pytest(pytest_args: list[str], plugins: list[Any] | None) -> int:
    import pytest

    return int(pytest.main(list(pytest_args), plugins=list(plugins or [])))


def _drive(body: Callable[[], int], backend: str) -> int:
    global _driver
    world = TorchrunWorld(backend, job_timeout=float(os.environ.get("SDC_CASE_TIMEOUT", DEFAULT_JOB_TIMEOUT)))
    try:
        world.start()
    except WorldUnavailable as exc:
        _say(f"state-dict-conformance: {exc}")
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
        _say(f"state-dict-conformance: the run stopped early: torchrun world lost: {world.lost}")
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
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if args == ["selfcheck"]:
        return selfcheck()
    # conformance is imported before pytest starts, so pytest cannot rewrite its asserts.
    return run_under_torchrun(["-W", "ignore::pytest.PytestAssertRewriteWarning", *args])


if __name__ == "__main__":
    # Run the imported module, not __main__: the harness hook looks up conformance.torchrun.
    from conformance.torchrun import main as _main

    code = _main()
    sys.stdout.flush()
    sys.stderr.flush()
    # A rank's thread may still be stuck in a collective of a lost world: do not wait for it.
    os._exit(code)
