"""The look-ahead pass (conformance.look_ahead) draws exactly the cases a plain run draws; a case
that fails there sends the property to a plain run that fails and shrinks as always."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from conformance.case import Case
from conformance.check import CaseCheck, CaseFailure, CaseReport
from conformance.compare import Difference
from conformance.divergences import Divergences
from conformance.harness import HarnessConfig
from conformance.look_ahead import run_looking_ahead
from conformance.properties import assert_conforms, property_of
from conformance.suite_options import profile_name
from strategies.spec import DictSpec, TensorSpec


class RecordingHarness:
    """Stands in for the harness: judges a case by ``fails`` and records which pass ran it
    (``started``: the look-ahead pass; ``checked``: a plain run). ``limit`` cases are in flight
    at most (a spawned world's ``max_in_flight``; one where the world does not queue)."""

    def __init__(
        self,
        fails: Callable[[Case], bool],
        fails_ahead: Callable[[Case], bool] | None = None,
        limit: int = 3,
    ):
        self.config = HarnessConfig(world_sizes=(2,))
        self.divergences = Divergences(entries=())
        self.look_ahead = None
        self.cases_by_utility: dict[str, int] = {}
        self.shared_by_utility: dict[str, int] = {}
        self.started: list[Case] = []
        self.checked: list[Case] = []
        self._fails, self._fails_ahead = fails, fails_ahead or fails
        self.limit = limit

    def in_flight_limit(self, case: Case) -> int:
        return self.limit

    def missing(self, utility: str) -> list[str]:
        return []

    def _report(self, case: Case, fails: Callable[[Case], bool]) -> CaseReport:
        self.cases_by_utility[case.utility] = self.cases_by_utility.get(case.utility, 0) + 1
        diffs = [Difference(0, "state_dict", (), "value", "planted", "expected")] if fails(case) else []
        return CaseReport(case, "recording", diffs)

    def start(self, case: Case) -> CaseCheck:
        self.started.append(case)
        return CaseCheck.judged(self._report(case, self._fails_ahead), abort_blocked=False)

    def check(self, case: Case) -> CaseReport:
        self.checked.append(case)
        return self._report(case, self._fails)


@pytest.fixture
def ci_property(monkeypatch) -> Iterator[Callable[[], Callable]]:
    """A fresh gather property decorated under the ci profile (derandomized), as the suite's are,
    drawing for 2 ranks (whatever run configuration another test left active)."""
    from conformance import harness

    monkeypatch.setattr(harness, "_active", HarnessConfig(world_sizes=(2,)))

    def make() -> Callable:
        @property_of("gather_state_dict")
        def test_gather(harness, case):
            assert_conforms(harness, case)

        return test_gather

    settings.load_profile(profile_name("ci"))
    try:
        yield make
    finally:
        settings.load_profile(profile_name("dev"))


def never(case: Case) -> bool:
    return False


def always(case: Case) -> bool:
    return True


def test_a_passing_property_runs_once_on_the_cases_a_plain_run_draws(ci_property):
    looking = RecordingHarness(fails=never)
    ci_property()(harness=looking)
    assert looking.checked == [], "a property whose cases all pass ran a second time"
    # a look-ahead pass that stops at its first case leaves the whole run to the plain run
    plain = RecordingHarness(fails=never, fails_ahead=always)
    ci_property()(harness=plain)
    assert plain.started == plain.checked[: plain.limit]  # the first case is judged once two more started
    assert len(looking.started) == settings.default.max_examples  # (the 2x2 examples need 4 ranks)
    assert [c.to_blob() for c in looking.started] == [c.to_blob() for c in plain.checked]
    assert looking.cases_by_utility == {"gather_state_dict": len(looking.started)}


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_a_failing_case_is_found_again_and_shrunk_by_a_plain_run(ci_property, limit):
    reference = RecordingHarness(fails=never)
    ci_property()(harness=reference)
    culprit = reference.started[20]
    leaves = len(culprit.to_blob())

    def big_like_the_culprit(case: Case) -> bool:
        return len(case.to_blob()) >= leaves

    failing = RecordingHarness(fails=big_like_the_culprit, limit=limit)
    with pytest.raises(CaseFailure) as raised:
        ci_property()(harness=failing)
    first = next(i for i, c in enumerate(reference.started) if big_like_the_culprit(c))
    # the pass stops at the failing case, or (queueing) at the last case queued behind it
    stopped = first + limit
    assert [c.to_blob() for c in failing.started] == [c.to_blob() for c in reference.started[:stopped]]
    # the plain run draws the same cases up to the failure, then shrinks it
    assert [c.to_blob() for c in failing.checked[: first + 1]] == [
        c.to_blob() for c in reference.started[: first + 1]
    ]
    assert len(failing.checked) > first + 1, "the plain run did not shrink"
    shrunk = Case.from_blob(raised.value.details["replay"].split()[-1])
    assert big_like_the_culprit(shrunk)
    # the stopped pass's cases are not counted: only the plain run's are
    assert failing.cases_by_utility == {"gather_state_dict": len(failing.checked)}


def test_a_pass_cut_short_by_a_skip_still_reports_the_failing_case_in_flight():
    """At the run's time limit the property skips; a failing case still in flight is reported,
    not lost, and a passing one lets the skip through."""
    failing = Case("gather_state_dict", 2, 1, DictSpec((("w", TensorSpec((2,), "float32")),)))
    passing = failing.with_kwargs(cpu_offload=True)
    harness = RecordingHarness(fails=lambda case: case == failing)

    def cut_short(case: Case) -> Callable[[], None]:
        def ahead() -> None:
            harness.look_ahead.push(case)
            pytest.skip("time limit reached")

        return ahead

    def plain() -> None:
        raise AssertionError("a skip is not a reason for a plain run")

    with pytest.raises(CaseFailure):
        run_looking_ahead(harness, cut_short(failing), plain)
    with pytest.raises(pytest.skip.Exception):
        run_looking_ahead(harness, cut_short(passing), plain)
    assert harness.started == [failing, passing] and harness.look_ahead is None


def test_ctrl_c_in_a_pass_is_not_turned_into_a_verdict():
    """Ctrl-C while a failing case is in flight ends the property as Ctrl-C (the case is not
    waited for: it could be hanging)."""
    case = Case("gather_state_dict", 2, 1, DictSpec((("w", TensorSpec((2,), "float32")),)))
    harness = RecordingHarness(fails=always)

    def interrupted() -> None:
        harness.look_ahead.push(case)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_looking_ahead(harness, interrupted, lambda: None)
    assert harness.look_ahead is None


def test_a_hang_ends_the_pass_without_running_the_case_queued_behind_it():
    """A case aborted by a hang ends the pass at once: the case started behind it is cancelled
    (a world restarted after the hang does not run it), not waited for."""
    from conformance.check import CaseAborted

    first = Case("gather_state_dict", 2, 1, DictSpec((("w", TensorSpec((2,), "float32")),)))
    second = first.with_kwargs(cpu_offload=True)
    events: list[tuple[str, Case]] = []

    class HangingHarness(RecordingHarness):
        def start(self, case: Case) -> CaseCheck:
            def finish() -> CaseReport:
                events.append(("report", case))
                if case == first:
                    raise CaseAborted("hang", "hang")
                return CaseReport(case, "recording", [])

            return CaseCheck(finish, abort_blocked=False, cancel=lambda: events.append(("cancel", case)))

    harness = HangingHarness(fails=never)

    def ahead() -> None:
        harness.look_ahead.push(first)
        harness.look_ahead.push(second)

    def plain() -> None:
        raise AssertionError("a hang is not a reason for a plain run")

    with pytest.raises(CaseAborted):
        run_looking_ahead(harness, ahead, plain)
    assert events == [("report", first), ("cancel", second)]
    assert harness.look_ahead is None
