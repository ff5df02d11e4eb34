"""The rank side of a case: materialise inputs, call the target's utility, observe everything.

``run_case`` is a world job: every rank executes it and returns an :class:`Outcome`. An
exception from the target becomes a ``RaisedObs`` result (and marks the outcome
``may_desync`` so the world keeps other ranks from waiting forever).
"""

from __future__ import annotations

from typing import Any

from conformance.calls import CallContext
from conformance.case import Case
from conformance.faults import target_traceback
from conformance.observation import Observer, Outcome, RaisedObs
from conformance.targets import load_target
from conformance.utilities import UTILITY


class LiveCall:
    """One rank's side of a case before and after the call: the live inputs, built exactly as
    every run builds them (``args``, ``kwargs``; ``args`` None where this rank makes no call),
    then the outcome observed from what the call returned or raised."""

    def __init__(self, case: Case) -> None:
        self._context = CallContext(case)  # keeps the inputs alive until they are observed
        self.call = UTILITY[case.utility].rank_call(self._context)
        self.args, self.kwargs = self.call.args, self.call.kwargs
        self._observer = Observer(self._context.storages)
        self._observer.remember_inputs(self.call.arguments)

    def _arguments(self) -> dict[str, Any]:
        return {name: self._observer.observe_argument(v) for name, v in self.call.arguments.items()}

    def returned(self, result: Any) -> Outcome:
        """The outcome of a call that returned ``result`` (None where no call was made)."""
        return Outcome(self._observer.observe_result(result), self._arguments())

    def raised(self, exc: BaseException, target_file: str) -> Outcome:
        """The outcome of a call that raised ``exc``, with the target's frames of its traceback."""
        raised = RaisedObs(type(exc).__name__, str(exc), target_traceback(exc, target_file))
        return Outcome(raised, self._arguments(), may_desync=True)


def run_case(case: Case, target_name: str) -> Outcome:
    """World job: call ``case.utility`` of the target on this rank and observe the outcome."""
    target = load_target(target_name)
    fn = target.function(case.utility)
    if fn is None:
        raise LookupError(f"target {target_name!r} has no {case.utility}")
    inputs = LiveCall(case)
    if inputs.args is None:
        return inputs.returned(None)
    try:
        result = fn(*inputs.args, **inputs.kwargs)
    except Exception as exc:
        return inputs.raised(exc, target.file)
    return inputs.returned(result)
