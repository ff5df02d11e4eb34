"""The job protocol every world speaks, whatever carries its bytes.

A *job* is a module-level function and its arguments, pickled once by the driver and run on
every rank. Each rank answers ``("ok", result)`` or ``("err", RankFailure)`` (:func:`execute`).
The driver (:class:`JobDriver`) collects one answer per rank and judges them
(:func:`judge`): every rank answered -> the results in rank order; a rank raised -> ``error``;
a rank raised (or returned a result with a true ``may_desync``) while others stayed silent past
the grace period -> ``error`` with those ranks ``Blocked``; silence past the deadline -> ``hang``;
a rank gone -> ``crash`` (the transport notices that). A silent rank that is still computing is
slow, not hung (:class:`JobClock`). After an ``error`` or a ``may_desync`` result, the next job
is preceded by a health check (:func:`conformance.world.context.health_check`).

The transports (:mod:`conformance.world.spawn`, :mod:`conformance.world.torchrun`) supply
delivery, waiting and what a fault does to the world (restart it, or lose it).
"""

from __future__ import annotations

import pickle
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from conformance import wire
from conformance.progress import ProgressWatch
from conformance.world.context import health_check

DEFAULT_JOB_TIMEOUT = 30.0
DEFAULT_START_TIMEOUT = 120.0  # seconds for a world to start and run its setup jobs
# After one rank raises, the others get this long to finish before they count as blocked.
DEFAULT_ERROR_GRACE = 5.0
# A rank still computing when its deadline passes (conformance.progress) is waited for until
# it has used this many times the job timeout in CPU-seconds: slow is not hung, but a spin is.
SLOW_ALLOWANCE_FACTOR = 4.0
HEALTH_CHECK_TIMEOUT = 10.0
SHUTDOWN = pickle.dumps((None, (), {}))  # the job that asks a rank to leave the world


class WorldUnavailable(RuntimeError):
    """The requested world cannot exist on this machine (e.g. NCCL without enough GPUs)."""


@dataclass(frozen=True)
class RankFailure:
    """What one rank reported instead of a result."""

    type_name: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class JobFailed(Exception):
    """A job did not produce a result on every rank.

    ``kind`` is ``"error"`` (a rank raised, or returned early while others stayed blocked),
    ``"hang"`` (no answer within the timeout) or ``"crash"`` (a rank died). ``failures`` maps
    each involved rank to what it reported; ``results`` holds what the other ranks returned.
    """

    def __init__(
        self,
        kind: str,
        failures: dict[int, RankFailure],
        detail: str = "",
        results: dict[int, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.results = results or {}  # what the other ranks returned
        self.failures = dict(sorted(failures.items()))
        self.detail = detail
        ranks = ", ".join(str(r) for r in self.failures)
        first = next(iter(self.failures.values()), None)
        summary = f"job {kind} on rank(s) {ranks}"
        if first is not None:
            summary += f": {first}"
        if detail:
            summary += f" ({detail})"
        super().__init__(summary)

    @property
    def left_ranks_blocked(self) -> bool:
        """Some ranks were still blocked in a collective when the job was judged: the
        world's process group cannot be trusted any more."""
        return any(f.type_name == "Blocked" for f in self.failures.values())


class PendingJob:
    """A job dispatched to every rank and not yet collected (:meth:`JobDriver.submit`).

    :meth:`result` waits for the ranks' answers and returns them in rank order, or raises
    :class:`JobFailed`; asking again gives the same answer. A job queued behind another
    (:attr:`JobDriver.max_in_flight`) that its ranks did not run, because a job before it
    returned early on some rank or took the world down, is sent again when its result is asked
    (after the health check or restart that any job then gets): it runs exactly once.
    :meth:`cancel` drops such a job instead.
    """

    def __init__(
        self, driver: JobDriver, fn: Callable[..., Any], args: tuple[Any, ...], payload: bytes
    ) -> None:
        self.fn = fn
        self.args = args
        self.payload = payload
        self.clock: JobClock | None = None  # set when the ranks are free to run it
        self.unsent = False  # the ranks never ran it: sent again when its result is asked
        self._driver = driver
        self._results: list[Any] | None = None
        self._failure: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._results is not None or self._failure is not None

    def result(self) -> list[Any]:
        if not self.done:
            try:
                self._driver._finish(self)
            except BaseException as exc:  # the driver's own failure (Ctrl-C, a world that cannot start)
                if not self.done:
                    self._failure = exc
                raise
        if self._failure is not None:
            raise self._failure
        assert self._results is not None
        return self._results

    def cancel(self) -> None:
        """Drop a job that its ranks never ran (see the class docstring); a job the ranks have
        is still collected, in turn, by the next job's result."""
        if self.unsent and not self.done:
            self._failure = JobCancelled("this job was cancelled before its ranks ran it")

    def _settle(self, results: list[Any] | None = None, failure: BaseException | None = None) -> None:
        self._results, self._failure = results, failure


class JobCancelled(RuntimeError):
    """The result of a job that was cancelled before its ranks ran it (:meth:`PendingJob.cancel`)."""


@dataclass(frozen=True)
class Skipped:
    """A rank's answer to a queued job it did not run: the job before it returned early on
    some rank (see :func:`gated`)."""


class JobRunner(Protocol):
    """What runs cases: a spawned :class:`~conformance.world.spawn.World` or the torchrun world."""

    size: int
    max_in_flight: int

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]: ...

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> PendingJob: ...


# --------------------------------------------------------------------------- rank side


@dataclass(frozen=True)
class Answer:
    """One rank's pickled answer to a job, and whether it returned early (raised, or its
    result may have left collectives unfinished)."""

    data: bytes
    early: bool


def execute(payload: bytes) -> Answer | None:
    """Run one pickled job on this rank; None when the job is the shutdown request."""
    try:
        fn, args, kwargs = pickle.loads(payload)
    except Exception as exc:
        reply: tuple[str, Any] = ("err", failure_of(exc))
    else:
        if fn is None:
            return None
        try:
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:
            reply = ("err", failure_of(exc))
    try:
        data = wire.dumps(reply)
    except Exception as exc:
        reply = ("err", failure_of(exc, "result could not be pickled: "))
        data = wire.dumps(reply)
    return Answer(data, reply[0] == "err" or may_desync(reply[1]))


def failure_of(exc: BaseException, prefix: str = "") -> RankFailure:
    """The :class:`RankFailure` that reports ``exc`` (type, message, formatted traceback)."""
    return RankFailure(
        type_name=type(exc).__qualname__,
        message=prefix + str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )


def may_desync(result: Any) -> bool:
    """A result may say it left its collectives unfinished (e.g. it caught an exception)."""
    return bool(getattr(result, "may_desync", False))


_QUEUED = b"Q"  # a queued job's payload: this byte, then the job


def gated(payload: bytes) -> bytes:
    """``payload`` as a job queued behind the one in flight: a rank runs it only once every rank
    has finished that one and none returned early (raised, or may have left a collective
    unfinished: a health check comes first then); otherwise it answers :data:`SKIPPED`. The
    transport decides how the ranks agree (over a channel that a rank still stuck in a
    collective of the job before cannot confuse)."""
    return _QUEUED + payload


def ungated(data: bytes) -> tuple[bool, bytes]:
    """Whether ``data`` is a queued job (see :func:`gated`), and the job."""
    if data[:1] == _QUEUED:
        return True, data[1:]
    return False, data


SKIPPED = wire.dumps(("ok", Skipped()))


# --------------------------------------------------------------------------- driver side


@dataclass
class Replies:
    """What the ranks of one job have answered so far."""

    size: int
    results: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, RankFailure] = field(default_factory=dict)

    def add(self, rank: int, data: bytes) -> bool:
        """Record ``rank``'s pickled answer; whether it returned early."""
        try:
            status, value = pickle.loads(data)
        except Exception as exc:
            status, value = "err", failure_of(exc, "result could not be unpickled by the driver: ")
        (self.errors if status == "err" else self.results)[rank] = value
        return status == "err" or may_desync(value)

    def answered(self, rank: int) -> bool:
        return rank in self.results or rank in self.errors

    @property
    def silent(self) -> list[int]:
        return [r for r in range(self.size) if not self.answered(r)]


class JobClock:
    """A job's deadline: ``timeout`` after dispatch, cut to ``grace`` from the moment a rank
    returns early, and moved on while a silent rank is still computing (slow is not hung)."""

    def __init__(
        self, cpu_seconds: Callable[[int], float | None], size: int, timeout: float, grace: float
    ) -> None:
        self.timeout = timeout
        self.grace = grace
        self._watch = ProgressWatch(cpu_seconds, range(size), cpu_budget=SLOW_ALLOWANCE_FACTOR * timeout)
        self._deadline = time.monotonic() + timeout

    def returned_early(self, silent: Iterable[int]) -> None:
        """A rank raised or may have desynced: the ``silent`` ranks get the grace period,
        judged on what they do from now on."""
        self._deadline = min(self._deadline, time.monotonic() + self.grace)
        self._watch.note(silent)

    def remaining(self, silent: Iterable[int]) -> float:
        """Seconds left to wait for the ``silent`` ranks (iterated only once the deadline has
        passed); 0 when the wait is over."""
        left = self._deadline - time.monotonic()
        if left > 0:
            return left
        if self._watch.busy(silent):
            self._deadline = time.monotonic() + self._watch.window
            return self._watch.window
        return 0.0


def judge(
    replies: Replies,
    timeout: float,
    stacks: Callable[[list[int]], dict[int, str]],
    consequence: str,
    what: str = "job",
) -> list[Any]:
    """The results in rank order, or :class:`JobFailed` for what the ranks answered once the
    wait is over. ``stacks(ranks)`` says where silent ranks are stuck; ``consequence`` says
    what a blocked or hung world means for the run (the transport's policy)."""
    results, errors, silent = replies.results, dict(replies.errors), replies.silent
    returned_early = sorted(errors) + [r for r, v in results.items() if may_desync(v)]
    if silent and returned_early:
        stuck = stacks(silent)
        early = ", ".join(map(str, returned_early))
        for rank in silent:
            errors[rank] = RankFailure(
                "Blocked",
                f"still blocked in a collective after rank(s) {early} returned",
                stuck.get(rank, ""),
            )
        detail = f"rank(s) {', '.join(map(str, silent))} were still blocked; {consequence}"
        raise JobFailed("error", errors, detail, results=results)
    if errors:
        raise JobFailed("error", errors, results=results)
    if silent:
        stuck = stacks(silent)
        silence = f"no answer within {timeout:g}s"
        raise JobFailed(
            "hang",
            {r: RankFailure("Timeout", silence, stuck.get(r, "")) for r in silent},
            f"{what} timed out; {consequence}",
            results=results,
        )
    return [results[r] for r in range(replies.size)]


class JobDriver:
    """The driver side of the job protocol, over a transport that a subclass supplies.

    ``submit(fn, *args, **kwargs)`` sends the job to every rank and returns a
    :class:`PendingJob` at once, so the caller can work while the ranks run;
    ``pending.result()`` collects and judges the answers. ``run`` is the two in one. Up to
    ``max_in_flight`` jobs are in flight at a time: each one after the first is queued on the
    ranks behind the one before it (:func:`gated`), so the ranks go from one to the next
    without a round trip to the driver. Jobs are collected in the order they were submitted,
    each keeping its answer for its own ``result()``: a submission beyond the limit first
    collects the oldest; where the limit is one (a transport whose ranks do not queue), a
    second submission raises ``RuntimeError``. A job's deadline counts from when the ranks are
    free to run it: its submission, or the collection of the job before it.

    A subclass provides ``size``, ``consequence`` (what a blocked, hung or crashed job means
    for the run) and: ``_prepare`` (make the world ready for a job, running
    :meth:`_check_health`), ``_send`` (deliver a payload to every rank), ``_wait`` (gather
    answers into :class:`Replies` until all answered or the :class:`JobClock` says stop;
    ``JobFailed("crash")`` for a dead rank), ``_stacks``, ``_cpu_seconds``, and what a failed
    or interrupted job does to the world (``_after_failure``, ``_after_interrupt``; a transport
    that takes the world down calls :meth:`_lose_in_flight`). A transport whose
    ``max_in_flight`` is over one has its ranks honour :func:`gated` payloads.
    """

    size: int
    consequence: str
    max_in_flight = 1

    def __init__(self, job_timeout: float, error_grace: float) -> None:
        self.job_timeout = job_timeout
        self.error_grace = error_grace
        self.jobs_run = 0
        self._needs_health_check = False
        self._in_flight: list[PendingJob] = []  # oldest first

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank; results in rank order."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> PendingJob:
        """Start ``fn(*args, **kwargs)`` on every rank (or queue it behind the job in flight)
        and return without waiting."""
        if self._in_flight and self.max_in_flight == 1:
            raise RuntimeError(
                "a job is already in flight on this world: ask its result() before submitting another"
            )
        while len(self._in_flight) >= self.max_in_flight:  # collected, kept for its result()
            self._collect_oldest()
        job = PendingJob(self, fn, args, pickle.dumps((fn, args, kwargs)))
        if self._in_flight:
            self._send(gated(job.payload))
            self.jobs_run += 1
            self._in_flight.append(job)
        else:
            self._dispatch_job(job)
        return job

    def _dispatch_job(self, job: PendingJob) -> None:
        """Send ``job`` with nothing in flight: the world made ready first."""
        self._prepare()
        job.clock = self._dispatch(job.payload, self.job_timeout)
        self.jobs_run += 1
        job.unsent = False
        self._in_flight.append(job)

    def _finish(self, pending: PendingJob) -> None:
        """Collect the jobs in flight up to ``pending``, in order (an unsent ``pending`` is sent
        again first); each keeps its results or failure. Raises only for the driver's own
        failures (Ctrl-C, a world that cannot start)."""
        if pending.unsent:
            while self._in_flight:
                self._collect_oldest()
            self._dispatch_job(pending)
        if pending not in self._in_flight:
            raise RuntimeError("this job is no longer in flight: its world was closed or restarted")
        while not pending.done:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        """Collect the oldest job in flight and apply the transport's failure policy; the jobs
        queued behind one that did not end cleanly on every rank are settled at once (each ran,
        or is to be sent again)."""
        job = self._in_flight[0]
        if job.clock is None:  # queued: the ranks are free to run it from now on
            job.clock = JobClock(self._cpu_seconds, self.size, self.job_timeout, self.error_grace)
        try:
            results = self._collect(job.clock)
        except JobFailed as exc:
            self._in_flight.remove(job)
            job._settle(failure=exc)
            self._after_failure(exc, job)
            self._settle_queued()
            return
        except BaseException as exc:  # Ctrl-C or another driver-side interruption mid-job
            self._in_flight.remove(job)
            job._settle(failure=exc)
            self._after_interrupt(exc, job)
            self._lose_in_flight()
            raise
        self._in_flight.remove(job)
        skipped = [rank for rank, r in enumerate(results) if isinstance(r, Skipped)]
        if len(skipped) == self.size:
            job.unsent = True  # its ranks did not run it: sent again when its result is asked
            return
        if skipped:  # cannot happen: the ranks agree on whether to run it (see gated)
            failures = {
                r: RankFailure("Skipped", "did not run the job while other ranks did") for r in skipped
            }
            ran = {r: v for r, v in enumerate(results) if r not in skipped}
            job._settle(failure=JobFailed("error", failures, results=ran))
            self._needs_health_check = True
            self._settle_queued()
            return
        job._settle(results=results)
        if any(may_desync(r) for r in results):
            self._needs_health_check = True
            self._settle_queued()

    def _settle_queued(self) -> None:
        """A job did not end cleanly on every rank: where the world is still up, collect what
        the ranks did with the jobs queued behind it (they skip them where a rank returned
        early)."""
        while self._in_flight:
            self._collect_oldest()

    def _lose_in_flight(self) -> None:
        """The world is gone: the jobs in flight will never be answered; each is sent again if
        its result is asked."""
        for job in self._in_flight:
            job.unsent = True
            job.clock = None
        self._in_flight = []

    def _dispatch(self, payload: bytes, timeout: float) -> JobClock:
        self._send(payload)
        return JobClock(self._cpu_seconds, self.size, timeout, self.error_grace)

    def _collect(self, clock: JobClock, what: str = "job") -> list[Any]:
        replies = Replies(self.size)
        self._wait(replies, clock)
        return judge(replies, clock.timeout, self._stacks, self.consequence, what)

    def _exchange(self, payload: bytes, timeout: float, what: str = "job") -> list[Any]:
        """Dispatch and collect one job of the world's own (setup, health check)."""
        return self._collect(self._dispatch(payload, timeout), what)

    def _check_health(self) -> JobFailed | None:
        """After a job that raised or may have desynced, make sure the ranks still agree;
        the health check's failure, if it failed."""
        if not self._needs_health_check:
            return None
        self._needs_health_check = False
        try:
            self._exchange(HEALTH_CHECK, min(self.job_timeout, HEALTH_CHECK_TIMEOUT))
        except JobFailed as exc:
            return exc
        return None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a transport supplies

    def start(self) -> None:
        """Bring the world up (every rank in the process group), if it is not up."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the world's ranks."""
        raise NotImplementedError

    def _prepare(self) -> None:
        raise NotImplementedError

    def _send(self, payload: bytes) -> None:
        raise NotImplementedError

    def _wait(self, replies: Replies, clock: JobClock) -> None:
        raise NotImplementedError

    def _stacks(self, ranks: list[int]) -> dict[int, str]:
        raise NotImplementedError

    def _cpu_seconds(self, rank: int) -> float | None:
        raise NotImplementedError

    def _after_failure(self, exc: JobFailed, pending: PendingJob) -> None:
        raise NotImplementedError

    def _after_interrupt(self, exc: BaseException, pending: PendingJob) -> None:
        raise NotImplementedError


HEALTH_CHECK = pickle.dumps((health_check, (), {}))
