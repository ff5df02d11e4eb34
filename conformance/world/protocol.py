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
    :class:`JobFailed`; asking again gives the same answer.
    """

    def __init__(
        self, driver: JobDriver, fn: Callable[..., Any], args: tuple[Any, ...], clock: JobClock
    ) -> None:
        self.fn = fn
        self.args = args
        self.clock = clock
        self._driver = driver
        self._results: list[Any] | None = None
        self._failure: BaseException | None = None

    def result(self) -> list[Any]:
        if self._results is None and self._failure is None:
            try:
                self._results = self._driver._finish(self)
            except BaseException as exc:
                self._failure = exc
                raise
        if self._failure is not None:
            raise self._failure
        assert self._results is not None
        return self._results


class JobRunner(Protocol):
    """What runs cases: a spawned :class:`~conformance.world.spawn.World` or the torchrun world."""

    size: int

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
    ``pending.result()`` collects and judges the answers. ``run`` is the two in one. Exactly
    one job is in flight at a time: ``submit`` before the previous job's ``result`` raises
    ``RuntimeError``. The job's deadline counts from ``submit``.

    A subclass provides ``size``, ``consequence`` (what a blocked, hung or crashed job means
    for the run) and: ``_prepare`` (make the world ready for a job, running
    :meth:`_check_health`), ``_send`` (deliver a payload to every rank), ``_wait`` (gather
    answers into :class:`Replies` until all answered or the :class:`JobClock` says stop;
    ``JobFailed("crash")`` for a dead rank), ``_stacks``, ``_cpu_seconds``, and what a failed
    or interrupted job does to the world (``_after_failure``, ``_after_interrupt``).
    """

    size: int
    consequence: str

    def __init__(self, job_timeout: float, error_grace: float) -> None:
        self.job_timeout = job_timeout
        self.error_grace = error_grace
        self.jobs_run = 0
        self._needs_health_check = False
        self._in_flight: PendingJob | None = None

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank; results in rank order."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> PendingJob:
        """Start ``fn(*args, **kwargs)`` on every rank and return without waiting."""
        if self._in_flight is not None:
            raise RuntimeError(
                "a job is already in flight on this world: ask its result() before submitting another"
            )
        payload = pickle.dumps((fn, args, kwargs))
        self._prepare()
        clock = self._dispatch(payload, self.job_timeout)
        self.jobs_run += 1
        self._in_flight = PendingJob(self, fn, args, clock)
        return self._in_flight

    def _finish(self, pending: PendingJob) -> list[Any]:
        """Collect ``pending`` (the job in flight) and apply the transport's failure policy."""
        if pending is not self._in_flight:
            raise RuntimeError("this job is no longer in flight: its world was closed or restarted")
        try:
            results = self._collect(pending.clock)
        except JobFailed as exc:
            self._in_flight = None
            self._after_failure(exc, pending)
            raise
        except BaseException as exc:  # Ctrl-C or another driver-side interruption mid-job
            self._in_flight = None
            self._after_interrupt(exc, pending)
            raise
        self._in_flight = None
        if any(may_desync(r) for r in results):
            self._needs_health_check = True
        return results

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
