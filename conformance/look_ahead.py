"""Look-ahead: a derandomized property's next case is drawn while the ranks run this one.

Hypothesis draws a case, calls the property, and draws the next case only once the call has
returned its verdict; drawing and the ranks' work would take turns. But a derandomized run
draws the same cases every time as long as each call passes: what Hypothesis draws next depends
only on its seed, its settings and the verdicts it has seen. So a derandomized property runs in
two passes at most:

1. The look-ahead pass (:func:`run_looking_ahead`'s ``ahead``): each call submits its case to
   the world (:meth:`Harness.start`, the oracle computed meanwhile) and returns at once. Where
   the world queues jobs (:attr:`~conformance.world.protocol.JobDriver.max_in_flight`), the
   oldest cases are judged only once this one is queued behind them, so the ranks go from case
   to case without waiting for the driver; otherwise the case before is judged first
   (:meth:`Harness.in_flight_limit`). When every case passes, the
   property has passed on exactly the cases a plain run draws, with the verdicts a plain run
   gives them: that is the result.
2. At the first case that does not pass (or whose check raises), the pass stops and the property
   runs again as a plain Hypothesis test (``plain``): it draws the same cases, fails at the same
   one and shrinks it exactly as always (the cases before it run twice). The counts of the
   stopped pass (cases run, known divergences' hits) are dropped, so that they are counted once.

A hang or a dead rank (:class:`CaseAborted`) or Ctrl-C ends either pass at once, as it ends a
plain run (a case queued behind it is dropped, not run); so does a skip at the run's time limit,
once the cases in flight have been judged.
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from conformance.case import Case
from conformance.check import CaseAborted, CaseCheck, CaseFailure

if TYPE_CHECKING:
    from conformance.harness import Harness


class LookAheadStopped(BaseException):
    """A case of the look-ahead pass did not pass. A BaseException, so that Hypothesis does not
    shrink in the pass (its verdicts arrive one case late): the plain run does that."""


class LookAhead:
    """The checks of one look-ahead pass, oldest first: each case's verdict is asked once the
    cases after it have been started, as many as its world queues (:meth:`push`), or at the
    end (:meth:`settle`)."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness
        self._in_flight: deque[CaseCheck] = deque()

    def push(self, case: Case) -> None:
        """Start ``case``, judging the oldest cases as the world's limit asks; raises
        :class:`LookAheadStopped` where one of them did not pass."""
        limit = self._harness.in_flight_limit(case)
        while len(self._in_flight) >= limit:
            self._settle_oldest()
        self._in_flight.append(self._harness.start(case))
        while len(self._in_flight) >= limit > 1:
            self._settle_oldest()

    def settle(self) -> None:
        """Judge every case in flight, oldest first (see :meth:`push`)."""
        while self._in_flight:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        try:
            report = self._in_flight.popleft().report()
        except Exception as exc:
            raise LookAheadStopped(f"a case's check raised {type(exc).__name__}: {exc}") from exc
        if not report.passed:
            raise LookAheadStopped("a case did not pass")

    def discard(self) -> None:
        """Collect the cases in flight without a verdict (a plain run is to run them again); one
        that never reached the ranks is dropped instead."""
        for check in self._drained():
            check.cancel()
            with contextlib.suppress(Exception, CaseAborted):
                check.report()

    def drop(self) -> None:
        """Forget the cases in flight: the pass ends at once (a hang, a dead rank, Ctrl-C). One
        that never reached the ranks is not sent; one the ranks have is collected, unread, by the
        world's next job."""
        for check in self._drained():
            check.cancel()

    def fail_if_in_flight_fails(self) -> None:
        """Judge the cases in flight, oldest first, and raise the :class:`CaseFailure` of the
        first that did not pass (the pass is ending some other way: a skip at the time limit,
        an interrupt)."""
        for check in self._drained():
            try:
                report = check.report()
            except (Exception, CaseAborted):
                continue
            if not report.passed:
                self.drop()
                raise CaseFailure(report)

    def _drained(self) -> Iterator[CaseCheck]:
        """The checks in flight, each no longer in flight once yielded."""
        while self._in_flight:
            yield self._in_flight.popleft()


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
        look_ahead.drop()
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
