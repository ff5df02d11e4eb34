"""Driver side of one case: run it on the world, ask the oracle, compare, excuse known divergences."""

from __future__ import annotations

from dataclasses import dataclass, field

from conformance.case import Case, replay_command
from conformance.compare import compare_outcomes
from conformance.divergences import Divergences
from conformance.laws import LAW_PREFIX, ORACLE_OF_LAW, open_facts, run_law
from conformance.observation import Outcome, RaisedObs
from conformance.oracle import expected_outcomes
from conformance.runner import first_root, run_case
from conformance.world import JobFailed, JobRunner

MAX_DIFFS_PER_RANK = 5


class HarnessError(RuntimeError):
    """The harness itself failed on a rank (not the target): a bug to report, not a divergence."""


@dataclass
class CaseReport:
    case: Case
    target: str
    diffs: list[str]  # unexcused differences, rank by rank
    excused: dict[str, int] = field(default_factory=dict)  # divergence id -> lines it excused

    @property
    def passed(self) -> bool:
        return not self.diffs

    def failure_message(self) -> str:
        lines = [f"{self.case.describe()} diverges from the contract (target {self.target}):"]
        shown: dict[str, int] = {}
        for diff in self.diffs:
            rank = diff.split(",", 1)[0]
            shown[rank] = shown.get(rank, 0) + 1
            if shown[rank] <= MAX_DIFFS_PER_RANK:
                lines.append(f"  {diff}")
        hidden = len(self.diffs) - sum(min(n, MAX_DIFFS_PER_RANK) for n in shown.values())
        if hidden:
            lines.append(f"  ... and {hidden} more differences")
        lines.append(f"replay: {replay_command(self.case, self.target)}")
        return "\n".join(lines)


def observe_case(world: JobRunner, case: Case, target: str) -> list[Outcome]:
    """Every rank's observed outcome; a hang, a dead or a blocked rank becomes a RaisedObs."""
    try:
        return world.run(run_case, case, target)
    except JobFailed as exc:
        outcomes = []
        for rank in range(world.size):
            if rank in exc.results:
                outcomes.append(exc.results[rank])
                continue
            failure = exc.failures[rank]
            if exc.kind == "error" and failure.type_name != "Blocked":
                raise HarnessError(
                    f"rank {rank} failed outside the target call: {failure}\n{failure.traceback}"
                ) from None
            kind = {"hang": "Hang", "crash": "RankDied"}.get(exc.kind, failure.type_name)
            outcomes.append(Outcome(RaisedObs(kind, failure.message)))
        return outcomes


def check_case(
    world: JobRunner, case: Case, target: str, divergences: Divergences | None = None
) -> CaseReport:
    """Run ``case`` and compare every rank with the oracle (or, for a ``law:`` case, the law's
    two sides with each other); known divergences excuse only the difference lines they match."""
    if case.utility.startswith(LAW_PREFIX):
        diffs = law_differences(world, case, target)
    else:
        observed = observe_case(world, case, target)
        expected = expected_outcomes(case)
        root = first_root(case)
        diffs = [
            d for r in range(case.world_size) for d in compare_outcomes(expected[r], observed[r], r, root)
        ]
    report = CaseReport(case, target, diffs)
    if divergences is not None and diffs:
        report.diffs, report.excused = divergences.excuse(case, diffs)
    return report


def law_differences(world: JobRunner, case: Case, target: str) -> list[str]:
    """Where the two sides of a cross-utility law disagree, rank by rank."""
    law = case.utility.removeprefix(LAW_PREFIX)
    try:
        outcomes: list[Outcome] = world.run(run_law, case, law, target)
    except JobFailed as exc:
        return [f"{case.utility}: {exc}"]
    diffs: list[str] = []
    for rank, outcome in enumerate(outcomes):
        reference = outcome.mutated["reference"]
        if reference is None:  # the oracle is the reference side
            reference = expected_outcomes(case, ORACLE_OF_LAW[law])[rank].result
        diffs += compare_outcomes(Outcome(open_facts(reference)), Outcome(outcome.result), rank, case.utility)
    return diffs
