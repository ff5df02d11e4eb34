"""Driver side of one case: run it on the world, ask the oracle, compare, excuse known divergences;
optionally run it on a baseline target too and compare the two outcomes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from conformance.case import Case, replay_command
from conformance.compare import Difference, compare_observed, compare_outcomes
from conformance.divergences import Divergences, left_blocked
from conformance.laws import LAW_PREFIX, ORACLE_OF_LAW, ORACLE_REFERENCE, open_facts, run_law
from conformance.observation import ANY, Outcome, RaisedObs, ValueObs
from conformance.runner import run_case
from conformance.scopes import leaf_info
from conformance.utilities import expected_outcomes, result_root
from conformance.world import JobFailed, JobRunner, PendingJob

MAX_DIFFS_PER_RANK = 5


class HarnessError(RuntimeError):
    """The harness itself failed on a rank (not the target): a bug to report, not a divergence."""


@dataclass
class CaseReport:
    case: Case
    target: str
    diffs: list[Difference]  # unexcused differences, rank by rank (with a baseline: those it lacks)
    excused: list[tuple[str, Difference]] = field(default_factory=list)  # (divergence id, difference)
    observed: list[Outcome] | None = field(default=None, repr=False)  # every rank's (not for laws)
    baseline: str | None = None  # the target the case also ran on, if any
    changes: list[Difference] = field(default_factory=list)  # target vs baseline; expected: baseline's
    shared: list[Difference] = field(default_factory=list)  # unexcused, and the baseline's too

    @property
    def passed(self) -> bool:
        return not self.diffs and not self.changes

    @property
    def excused_counts(self) -> dict[str, int]:
        """Divergence id -> differences it excused in this case."""
        counts: dict[str, int] = {}
        for entry_id, _ in self.excused:
            counts[entry_id] = counts.get(entry_id, 0) + 1
        return counts

    def failure_message(self) -> str:
        if self.baseline is None:
            lines = [f"{self.case.describe()} diverges from the contract (target {self.target}):"]
            lines += listed(self.diffs, "  ")
        else:
            b = self.baseline
            lines = [f"{self.case.describe()} differs from the baseline {b} (target {self.target}):"]
            for title, diffs in (
                (f"(a) where the target differs from {b} (expected: what {b} observed)", self.changes),
                (f"contract differences that {b} does not have", self.diffs),
                (f"(b) shared with the baseline {b}: both differ from the contract so", self.shared),
            ):
                if diffs:
                    lines += [f"  {title}:", *listed(diffs, "    ")]
        for entry_id, count in self.excused_counts.items():
            lines.append(f"  (known divergence {entry_id} excused {count} other difference(s))")
        for rank in range(self.case.world_size):
            raised = self.raised_lines(rank)
            if raised:
                lines += [f"  rank {rank} {raised[0]}", *(f"  {line}" for line in raised[1:])]
        lines.append(f"replay: {replay_command(self.case, self.target)}")
        if self.baseline is not None:
            lines.append(f"replay on the baseline: {replay_command(self.case, self.baseline)}")
        return "\n".join(lines)

    def raised_lines(self, rank: int) -> list[str]:
        """``raised X: message`` and the target's traceback, indented, where ``rank`` raised."""
        outcome = self.observed[rank] if self.observed else None
        if outcome is None or not isinstance(outcome.result, RaisedObs):
            return []
        raised = outcome.result
        return [
            f"raised {raised.type_name}: {raised.message}",
            *(f"  {t}" for t in raised.traceback.splitlines()),
        ]

    def rank_lines(self) -> list[str]:
        """What ``replay`` (and a ``replay --script`` script) prints: each rank's differences,
        those excused, and where it raised; the known divergences that excused any."""
        if self.passed and not self.excused:
            return ["conforms: every rank observed what the contract expects"]
        lines = []
        for rank in range(self.case.world_size):
            mine = [d for d in self.diffs if d.rank == rank]
            excused = [(entry, d) for entry, d in self.excused if d.rank == rank]
            if not mine and not excused:
                lines.append(f"rank {rank}: matches the contract")
            else:
                lines.append(f"rank {rank}: {len(mine)} difference(s), {len(excused)} excused")
            lines += [f"  {diff.render().split(', ', 1)[1]}" for diff in mine]
            lines += [f"  excused by {entry}: {diff.render().split(', ', 1)[1]}" for entry, diff in excused]
            lines += [f"  {line}" for line in self.raised_lines(rank)]
        lines += [
            f"known divergence {key}: excused {n} difference(s)" for key, n in self.excused_counts.items()
        ]
        return lines

    def to_json(self) -> dict[str, Any]:
        """The case, its replay command, every unexcused difference and every excused one."""
        return case_json(self.case, self.target, self.diffs, self.excused)


def case_json(
    case: Case,
    target: str,
    diffs: Sequence[Difference] = (),
    excused: Sequence[tuple[str, Difference]] = (),
) -> dict[str, Any]:
    """A failed case as report data: its description, replay command and differences."""
    return {
        "case": case.describe(),
        "replay": replay_command(case, target),
        "differences": [d.to_json() for d in diffs],
        "excused": [{"entry": entry_id, "difference": d.to_json()} for entry_id, d in excused],
    }


class CaseFailure(AssertionError):
    """A case that diverges from the contract: the message people read (by default the
    report's failure message), with the case's report data in ``details``."""

    def __init__(self, report: CaseReport, message: str | None = None) -> None:
        super().__init__(message or report.failure_message())
        self.details = report.to_json()


def listed(diffs: list[Difference], indent: str) -> list[str]:
    """The rendered lines of ``diffs``, at most MAX_DIFFS_PER_RANK per rank, then a count of the rest."""
    lines: list[str] = []
    shown: dict[int, int] = {}
    for diff in diffs:
        shown[diff.rank] = shown.get(diff.rank, 0) + 1
        if shown[diff.rank] <= MAX_DIFFS_PER_RANK:
            lines.append(f"{indent}{diff.render()}")
    hidden = len(diffs) - len(lines)
    if hidden:
        lines.append(f"{indent}... and {hidden} more differences")
    return lines


class CaseAborted(BaseException):
    """A case ended by a hang or a dead rank (``kind`` "hang" / "crash"), or failed leaving
    ranks blocked ("blocked"). A BaseException, so that Hypothesis does not shrink it (each
    step would cost a timeout and a world restart): the property stops here with this
    report, and the run goes on with the next property."""

    def __init__(self, text: str, kind: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(text)
        self.kind = kind
        self.details = details  # the case as report data (see case_json), where known


def fault_report(case: Case, target: str, exc: JobFailed) -> str:
    """The failure text of a hang or a dead rank: what each rank reported (a stuck rank's
    stack, a dead rank's exit and last stderr lines) and the replay command."""
    lines = [
        f"{case.describe()} did not finish (target {target}): {exc.kind} on rank(s) {', '.join(map(str, exc.failures))}"
    ]
    for rank, failure in exc.failures.items():
        lines.append(f"  rank {rank}: {failure}")
        lines += [f"    {line}" for line in failure.traceback.splitlines()]
    lines.append(f"replay: {replay_command(case, target)}")
    return "\n".join(lines)


def observe_case(world: JobRunner, case: Case, target: str, abort_on_fault: bool = False) -> list[Outcome]:
    """Every rank's observed outcome; a blocked rank (and, unless ``abort_on_fault``, a hang or
    a dead rank) becomes a RaisedObs. With ``abort_on_fault`` a hang or a dead rank raises
    :class:`CaseAborted`."""
    return observed_outcomes(world.submit(run_case, case, target), world.size, case, target, abort_on_fault)


class SubmittedCase:
    """A case submitted to the world, with the oracle's expected outcomes (``expected``)
    computed while the ranks run it: the oracle needs nothing they observe."""

    def __init__(self, world: JobRunner, case: Case, target: str) -> None:
        self.case, self.target, self.size = case, target, world.size
        self.pending = world.submit(run_case, case, target)
        try:
            self.expected = expected_outcomes(case)
        except BaseException:
            with contextlib.suppress(Exception):
                self.pending.result()  # collected, so that the world takes the next job
            raise

    def observed(self, abort_on_fault: bool = False) -> list[Outcome]:
        """The ranks' outcomes, as :func:`observe_case` gives them."""
        return observed_outcomes(self.pending, self.size, self.case, self.target, abort_on_fault)


def observed_outcomes(
    pending: PendingJob, size: int, case: Case, target: str, abort_on_fault: bool = False
) -> list[Outcome]:
    """The outcomes of a submitted :func:`~conformance.runner.run_case` job (see
    :func:`observe_case`)."""
    try:
        return pending.result()
    except JobFailed as exc:
        if abort_on_fault and exc.kind in ("hang", "crash"):
            raise CaseAborted(fault_report(case, target, exc), exc.kind, case_json(case, target)) from None
        outcomes = []
        for rank in range(size):
            if rank in exc.results:
                outcomes.append(exc.results[rank])
                continue
            failure = exc.failures.get(rank)
            if failure is None:  # still running when another rank died, then killed with the world
                outcomes.append(Outcome(RaisedObs("RankDied", f"no answer: {exc}")))
                continue
            if exc.kind == "error" and failure.type_name != "Blocked":
                raise HarnessError(
                    f"rank {rank} failed outside the target call: {failure}\n{failure.traceback}"
                ) from None
            kind = {"hang": "Hang", "crash": "RankDied"}.get(exc.kind, failure.type_name)
            outcomes.append(Outcome(RaisedObs(kind, failure.message)))
        return outcomes


class CaseCheck:
    """A case being checked (:func:`start_case`): :meth:`report` collects what is still running,
    judges it and returns the report; it may be asked once. :meth:`cancel` drops a case whose
    job never reached the ranks (:meth:`PendingJob.cancel`); its report then raises."""

    def __init__(
        self, finish: Callable[[], CaseReport], abort_blocked: bool, cancel: Callable[[], None] | None = None
    ) -> None:
        self._finish: Callable[[], CaseReport] | None = finish
        self._abort_blocked = abort_blocked
        self._cancel = cancel

    @classmethod
    def judged(cls, report: CaseReport, abort_blocked: bool) -> CaseCheck:
        """A check whose case has already run and been judged."""
        return cls(lambda: report, abort_blocked)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()

    def report(self) -> CaseReport:
        if self._finish is None:
            raise RuntimeError("this case check has already been reported")
        finish, self._finish = self._finish, None
        report = finish()
        if self._abort_blocked:
            _abort_if_blocked(report)
        return report


def check_case(world: JobRunner, case: Case, target: str, *args: Any, **kwargs: Any) -> CaseReport:
    """:func:`start_case` (same arguments), waited for: the case's report."""
    return start_case(world, case, target, *args, **kwargs).report()


def start_case(
    world: JobRunner,
    case: Case,
    target: str,
    divergences: Divergences | None = None,
    count: bool = True,
    abort_on_fault: bool = False,
    *,
    baseline: str | None = None,
    abort_blocked: bool = True,
) -> CaseCheck:
    """Start checking ``case``: submit it, compute the oracle while the ranks run it, and return
    at once; the check's ``report()`` collects and judges (:func:`check_case` does both). A law
    case, or a case checked against a baseline, runs more than one job: it is run and judged
    before this returns.

    Every rank is compared with the oracle (for a ``law:`` case, the law's two sides with each
    other); known divergences excuse only the differences they match. With ``abort_on_fault``
    a hang or a dead rank raises :class:`CaseAborted`, and so does (unless not
    ``abort_blocked``) an unexcused difference that left ranks blocked.

    With a ``baseline`` target, ``case`` also runs there in the same world: ``changes`` are
    where the target's outcome differs from the baseline's, exactly and rank by rank; the
    target's unexcused contract differences that the baseline has too move from ``diffs`` to
    ``shared``. (A law case has no single outcome to compare: its differences are split so,
    and a law difference the baseline lacks stays in ``diffs``.) Ranks left blocked abort the
    case (with ``abort_on_fault``) only where the baseline's were not."""
    abort = abort_on_fault and abort_blocked
    if baseline is not None:
        report = check_case(world, case, target, divergences, count, abort_on_fault, abort_blocked=False)
        theirs = check_case(world, case, baseline, None, count, abort_on_fault, abort_blocked=False)
        return CaseCheck.judged(_against_baseline(report, theirs, baseline), abort)
    if case.utility.startswith(LAW_PREFIX):
        diffs = located(case, law_differences(world, case, target, abort_on_fault))
        return CaseCheck.judged(_excuse(CaseReport(case, target, diffs), divergences, count), abort)
    submitted = SubmittedCase(world, case, target)
    return CaseCheck(
        lambda: judge(
            case, target, submitted.observed(abort_on_fault), divergences, count, submitted.expected
        ),
        abort,
        submitted.pending.cancel,
    )


def _abort_if_blocked(report: CaseReport) -> None:
    """Raise :class:`CaseAborted` for a failing difference that left ranks blocked."""
    if any(left_blocked(d) for d in [*report.changes, *report.diffs]):
        raise CaseAborted(
            report.failure_message()
            + "\n(not shrunk: ranks were left blocked, and each retry restarts the world)",
            "blocked",
            report.to_json(),
        )


def _against_baseline(report: CaseReport, theirs: CaseReport, baseline: str) -> CaseReport:
    """``report`` with what the baseline's report ``theirs`` shares moved to ``shared``, and
    the target's changes from the baseline."""
    case = report.case
    report.baseline = baseline
    report.shared = [d for d in report.diffs if d in theirs.diffs]
    report.diffs = [d for d in report.diffs if d not in theirs.diffs]
    if report.observed is not None and theirs.observed is not None:
        root = result_root(case)
        changes = [
            d
            for r in range(case.world_size)
            for d in compare_observed(theirs.observed[r], report.observed[r], r, root)
        ]
        report.changes = [replace(d, leaf=leaf_info(case, d)) for d in changes]
    return report


def judge(
    case: Case,
    target: str,
    observed: list[Outcome],
    divergences: Divergences | None = None,
    count: bool = True,
    expected: list[Outcome] | None = None,
) -> CaseReport:
    """The report on every rank's observed outcome of ``case`` (not a law's): the oracle's
    differences (from ``expected``, the oracle's outcomes, where already computed), less those
    the known ``divergences`` excuse."""
    diffs = oracle_differences(case, observed, expected=expected)
    report = CaseReport(case, target, located(case, diffs), observed=observed)
    report = _excuse(report, divergences, count)
    if divergences is not None and report.excused:
        rejudged, found = _judged_as_if(case, observed, report.excused, divergences, count)
        report.diffs = [d for d in report.diffs if d.rank not in rejudged] + found
    return report


def located(case: Case, diffs: list[Difference]) -> list[Difference]:
    """``diffs`` with what the case's spec says about the leaf each one is on."""
    return [replace(d, leaf=leaf_info(case, d)) for d in diffs]


def _excuse(report: CaseReport, divergences: Divergences | None, count: bool) -> CaseReport:
    """``report`` with the differences the known ``divergences`` match moved to ``excused``."""
    if divergences is not None and report.diffs:
        report.diffs, report.excused = divergences.excuse(report.case, report.diffs, count)
    return report


def oracle_differences(
    case: Case,
    observed: list[Outcome],
    expected_case: Case | None = None,
    expected: list[Outcome] | None = None,
) -> list[Difference]:
    """Every rank's differences from what the oracle expects for ``expected_case`` (``case``;
    ``expected``: the oracle's outcomes for it, where already computed)."""
    expected = expected if expected is not None else expected_outcomes(expected_case or case)
    root = result_root(case)
    return [d for r in range(case.world_size) for d in compare_outcomes(expected[r], observed[r], r, root)]


def _judged_as_if(
    case: Case,
    observed: list[Outcome],
    excused: list[tuple[str, Difference]],
    divergences: Divergences,
    count: bool,
) -> tuple[set[int], list[Difference]]:
    """An entry with ``as_if`` excuses a call that returned instead of raising; what it
    returned, and its arguments after the call, must then be what the contract gives for the
    call made with those arguments. Returns the ranks so re-judged (their differences from the
    raising expectation no longer count) and the differences found so, judged by the other
    entries as usual."""
    by_id = {e.id: e for e in divergences.entries}
    found: list[Difference] = []
    as_ifs = [
        (by_id[entry_id], diff)
        for entry_id, diff in excused
        if by_id[entry_id].as_if and diff.field == "raised" and diff.observed == "nothing"
    ]
    rejudged = {diff.rank for _, diff in as_ifs}
    # the re-judged ranks keep only the excuse of their raise from the first judgement
    excused[:] = [(e, d) for e, d in excused if d.rank not in rejudged or d.field == "raised"]
    for entry, diff in as_ifs:
        as_if = case.with_kwargs(**dict(entry.as_if))
        mine = [observed[r] if r == diff.rank else Outcome(ANY) for r in range(case.world_size)]
        again = [d for d in oracle_differences(case, mine, as_if) if d.rank == diff.rank]
        again = located(case, again)
        left, more = divergences.excuse(case, again, count)
        excused.extend(more)
        found += left
    return rejudged, found


#: What a rank left blocked in a law's collective side was to do instead: return.
NOTHING_RETURNED = ValueObs("NoneType", None)


def law_differences(
    world: JobRunner, case: Case, target: str, abort_on_fault: bool = False
) -> list[Difference]:
    """Where the two sides of a cross-utility law disagree, rank by rank."""
    law = case.utility.removeprefix(LAW_PREFIX)
    blocked: dict[int, Any] = {}
    try:
        outcomes: list[Outcome | None] = list(world.run(run_law, case, law, target))
    except JobFailed as exc:
        if abort_on_fault and exc.kind in ("hang", "crash"):
            raise CaseAborted(fault_report(case, target, exc), exc.kind, case_json(case, target)) from None
        if exc.kind != "error" or any(f.type_name != "Blocked" for f in exc.failures.values()):
            rank = next(iter(exc.failures), 0)
            return [Difference(rank, case.utility, (), "job", exc.kind, "result", f"{exc}")]
        # a rank raised in a collective side and returned; its peers were left blocked there
        blocked = dict(exc.failures)
        outcomes = [exc.results.get(rank) for rank in range(world.size)]
    diffs: list[Difference] = []
    for rank, outcome in enumerate(outcomes):
        if outcome is None:
            stuck = Outcome(RaisedObs("Blocked", blocked[rank].message))
            diffs += compare_outcomes(Outcome(NOTHING_RETURNED), stuck, rank, case.utility)
            continue
        reference = outcome.mutated["reference"]
        if reference is None:  # the oracle is the reference side
            reference = expected_outcomes(case, ORACLE_OF_LAW[law])[rank].result
        elif isinstance(reference, str) and reference.startswith(ORACLE_REFERENCE):  # first side raised
            reference = expected_outcomes(case, reference.removeprefix(ORACLE_REFERENCE))[rank].result
        diffs += compare_outcomes(Outcome(open_facts(reference)), Outcome(outcome.result), rank, case.utility)
    return diffs
