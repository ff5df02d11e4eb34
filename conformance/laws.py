"""Cross-utility laws: two ways of computing one thing that must agree on every rank.

Each law is a rank-side job returning two outcomes; the driver compares them with the usual
comparison (facts that legitimately differ between the two sides, such as aliasing, are
left open on the reference side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from conformance.calls import CallContext
from conformance.case import Case
from conformance.observation import ANY, Container, Observer, Outcome, RaisedObs, TensorObs
from conformance.targets import load_target
from conformance.vocabulary import FULL_ROOT, ROOT

LAW_PREFIX = "law:"
# Laws whose reference side is the oracle's expectation for this utility.
ORACLE_OF_LAW = {"flatten_roundtrip": "unflatten_state_dict"}

LAWS: dict[str, tuple[str, ...]] = {
    # law name -> the utilities it involves
    "offload_after_gather": ("gather_state_dict", "offload_state_dict_to_cpu"),
    "copy_into_cpu_copy": ("create_cpu_state_dict", "copy_state_dict", "offload_state_dict_to_cpu"),
    "flatten_roundtrip": ("flatten_state_dict", "unflatten_state_dict"),
    "broadcast_is_distribute": ("broadcast_state_dict", "distribute_state_dict"),
}


#: The reference a rank reports when the first side of a law raised there: the contract's
#: expectation for that utility (``ORACLE_REFERENCE + utility``), judged by the driver.
ORACLE_REFERENCE = "oracle:"


class FirstSideRaised(Exception):
    """The first side of a collective law raised on this rank: the rank stops there, since a
    second collective would put it out of step with peers still inside the first one's."""

    def __init__(self, raised: RaisedObs, utility: str) -> None:
        super().__init__(raised.message)
        self.raised, self.utility = raised, utility


def _observe(c: CallContext, thunk: Callable[[], Any]) -> Any:
    try:
        value = thunk()
    except Exception as exc:
        return RaisedObs(type(exc).__name__, str(exc))
    return Observer(c.storages).observe(value)


def _offload_after_gather(c: CallContext, fn: Callable[[str], Any]) -> tuple[Any, Any]:
    """gather(cpu_offload=True) == offload_state_dict_to_cpu(gather(...))."""
    sd = c.build(c.case.state_dict, ROOT).value
    direct = _observe(c, lambda: fn("gather_state_dict")(sd, cpu_offload=True))
    if isinstance(direct, RaisedObs):
        raise FirstSideRaised(direct, "gather_state_dict")
    two_step = _observe(c, lambda: fn("offload_state_dict_to_cpu")(fn("gather_state_dict")(sd)))
    return direct, two_step


def _copy_into_cpu_copy(c: CallContext, fn: Callable[[str], Any]) -> tuple[Any, Any]:
    """copy_state_dict(sd, create_cpu_state_dict(sd)) holds what offload_state_dict_to_cpu(sd) holds."""
    sd = c.build(c.case.state_dict, ROOT).value
    offloaded = _observe(c, lambda: fn("offload_state_dict_to_cpu")(sd))
    copied = _observe(c, lambda: fn("copy_state_dict")(sd, fn("create_cpu_state_dict")(sd)))
    return offloaded, copied


def _flatten_roundtrip(c: CallContext, fn: Callable[[str], Any]) -> tuple[Any, Any]:
    """unflatten(*flatten(sd)) == the oracle's unflattening of sd (checked by the driver)."""
    sd = c.build(c.case.state_dict, ROOT).value
    return None, _observe(c, lambda: fn("unflatten_state_dict")(*fn("flatten_state_dict")(sd)))


def _broadcast_is_distribute(c: CallContext, fn: Callable[[str], Any]) -> tuple[Any, Any]:
    """broadcast_state_dict from rank 0 == distribute_state_dict when every rank holds full."""
    full = c.build(c.case.state_dict, FULL_ROOT).value
    via_broadcast = c.build(c.case.other, "local_state_dict", seed_offset=1).value
    via_distribute = c.build(c.case.other, "local_state_dict", seed_offset=1).value
    source = full if c.rank == 0 else {}
    first = _observe(c, lambda: fn("broadcast_state_dict")(source, via_broadcast, device=c.device))
    if isinstance(first, RaisedObs):
        raise FirstSideRaised(first, "broadcast_state_dict")
    second = _observe(c, lambda: fn("distribute_state_dict")(full, via_distribute, device=c.device))
    observer = Observer(c.storages)
    return (
        first if isinstance(first, RaisedObs) else observer.observe(via_broadcast),
        second if isinstance(second, RaisedObs) else observer.observe(via_distribute),
    )


RANK_LAWS = {
    "offload_after_gather": _offload_after_gather,
    "copy_into_cpu_copy": _copy_into_cpu_copy,
    "flatten_roundtrip": _flatten_roundtrip,
    "broadcast_is_distribute": _broadcast_is_distribute,
}


def run_law(case: Case, law: str, target_name: str) -> Outcome:
    """World job: both sides of ``law`` on this rank, as ``result`` (reference side, in
    ``mutated["reference"]``) and ``result`` (other side). Where the first side of a collective
    law raises, the rank reports that raise as ``result`` and the contract's expectation for
    its utility as the reference (:data:`ORACLE_REFERENCE`)."""
    target = load_target(target_name)

    def fn(utility: str) -> Any:
        found = target.function(utility)
        if found is None:
            raise LookupError(f"target {target_name!r} has no {utility}")
        return found

    c = CallContext(case)
    try:
        reference, other = RANK_LAWS[law](c, fn)
    except FirstSideRaised as stopped:
        return Outcome(stopped.raised, {"reference": ORACLE_REFERENCE + stopped.utility}, may_desync=True)
    raised = isinstance(reference, RaisedObs) or isinstance(other, RaisedObs)
    return Outcome(other, {"reference": reference}, may_desync=raised)


def open_facts(tree: Any) -> Any:
    """``tree`` with the facts two equivalent computations may differ in left open."""
    if isinstance(tree, Container):
        return replace(tree, children=tuple(open_facts(c) for c in tree.children))
    if isinstance(tree, TensorObs):
        return replace(tree, aliases=ANY, pinned=ANY, shared=ANY, stride=ANY)
    return tree
