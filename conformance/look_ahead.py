"""Look-ahead: a derandomized property's next case is drawn while the ranks run this one.

Hypothesis draws a case, calls the property, and draws the next case only once the call has
returned its verdict; drawing and the ranks' work would take turns. But a derandomized run
draws the same cases every time as long as each call passes: what Hypothesis draws next depends
only on its seed, its settings and the verdicts it has seen. So a derandomized property runs in
two passes at most:

1. The look-ahead pass (:func:`run_looking_ahead`'s ``ahead``): each call submits its case to
   the world (:meth:`Harness.start`, the oracle computed meanwhile) and returns at once; the
   case's verdict is asked when the next case arrives, or when the pass ends. When every case
   passes, the property has passed on exactly the cases a plain run draws, with the verdicts a
   plain run gives them: that is the result.
2. At the first case that does not pass (or whose check raises), the pass stops and the property
   runs again as a plain Hypothesis test (``plain``): it draws the same cases, fails at the same
   one and shrinks it exactly as always (the cases before it run twice). The counts of the
   stopped pass (cases run, known divergences' hits) are dropped, so that they are counted once.

A hang or a dead rank (:class:`CaseAborted`) or Ctrl-C ends either pass at once, as it ends a
plain run; so does a skip at the run's time limit, once the case in flight has been judged.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from conformance.case import Case
from conformance.check import CaseAborted, CaseCheck, CaseFailure, CaseReport

if TYPE_CHECKING:
    from conformance.harness import Harness


class LookAheadStopped(BaseException):
    """A case of the look-ahead pass did not pass. A BaseException, so that Hypothesis does not
    shrink in the pass (its verdicts arrive one case late): the plain run does that."""


class LookAhead:
    """The checks of one look-ahead pass: each case's verdict is asked when the next case
    arrives (:meth:`push`) or at the end (:meth:`settle`)."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness
        self._in_flight: CaseCheck | None = None

    def push(self, case: Case) -> None:
        """Judge the case in flight, then start ``case``; raises :class:`LookAheadStopped` where
        the case in flight did not pass."""
        self.settle()
        self._in_flight = self._harness.start(case)

    def settle(self) -> None:
        """Judge the case in flight, if any (see :meth:`push`)."""
        try:
            report = self._report_in_flight()
        except Exception as exc:
            raise LookAheadStopped(f"a case's check raised {type(exc).__name__}: {exc}") from exc
        if report is not None and not report.passed:
            raise LookAheadStopped("a case did not pass")

    def discard(self) -> None:
        """Collect the case in flight without a verdict (a plain run is to run it again)."""
        with contextlib.suppress(Exception, CaseAborted):
            self._report_in_flight()

    def fail_if_in_flight_fails(self) -> None:
        """Judge the case in flight, if any, and raise its :class:`CaseFailure` if it did not pass
        (the pass is ending some other way: a skip at the time limit, an interrupt)."""
        try:
            report = self._report_in_flight()
        except (Exception, CaseAborted):
            return
        if report is not None and not report.passed:
            raise CaseFailure(report)

    def _report_in_flight(self) -> CaseReport | None:
        """The report of the case in flight (None when there is none), which is then no longer
        in flight whatever ``report()`` raises."""
        check, self._in_flight = self._in_flight, None
        return None if check is None else check.report()


def run_looking_ahead(harness: Harness, ahead: Callable[[], None], plain: Callable[[], None]) -> None:
    """Run a derandomized property: its look-ahead pass ``ahead`` (the property's Hypothesis
    test, whose calls :func:`~conformance.properties.assert_conforms` makes :meth:`LookAhead.push`
    while ``harness.look_ahead`` is set), and ``plain`` (the same test, drawing the same cases,
    judging each in its own call) only where the pass stopped at a case that did not pass, or
    Hypothesis raised in it. Any other exit of the pass is the property's: a skip at the time
    limit after the case in flight is judged, a hang, a dead rank or Ctrl-C at once."""
    counts = _counts(harness)
    look_ahead = harness.look_ahead = LookAhead(harness)
    try:
        ahead()
        look_ahead.settle()
        return
    except (LookAheadStopped, Exception):
        look_ahead.discard()
    except pytest.skip.Exception:  # the run's time limit
        look_ahead.fail_if_in_flight_fails()
        raise
    finally:  # a hang, a dead rank or Ctrl-C ends the pass as it is
        harness.look_ahead = None
    _restore(harness, counts)
    plain()


def _counts(harness: Harness) -> tuple[dict[str, int], ...]:
    """A copy of what a run counts (see :func:`_counted`)."""
    return copy.deepcopy(_counted(harness))


def _restore(harness: Harness, counts: tuple[dict[str, int], ...]) -> None:
    for now, before in zip(_counted(harness), counts, strict=True):
        now.clear()
        now.update(before)


def _counted(harness: Harness) -> tuple[dict[str, int], ...]:
    """What a run counts: cases per utility, known divergences' hits, cases the baseline shares."""
    return (harness.cases_by_utility, harness.divergences.hits, harness.shared_by_utility)
