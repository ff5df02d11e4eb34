"""Building blocks of the property suite: deferred case strategies and the assertion."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, seed, settings
from hypothesis import strategies as st

from conformance import mesh_examples
from conformance.case import Case
from conformance.check import CaseFailure
from conformance.harness import Harness, active_config, out_of_time
from conformance.look_ahead import LookAheadStopped, run_looking_ahead
from conformance.utilities import case_strategy
from strategies.spec import DictSpec, UnsupportedSpec
from strategies.stable import docstring_free_seed


def cases_for(utility: str, **fixed: Any) -> st.SearchStrategy[Case]:
    """Cases of ``utility`` on the configured world sizes, with ``fixed`` keyword arguments
    forced (a value of ``None`` removes the argument)."""

    def build() -> st.SearchStrategy[Case]:
        config = active_config()
        strategy = case_strategy(utility, config.world_sizes, config.backend)
        return strategy.map(lambda case: case.with_kwargs(**fixed)) if fixed else strategy

    return st.deferred(build)


def property_of(
    utility: str, *, transform: Callable[[Case], Case] | None = None, **fixed: Any
) -> Callable[[Callable], Callable]:
    """Decorate a suite test: it runs the 2x2 mesh cases of ``utility``
    (:mod:`conformance.mesh_examples`) first, then Hypothesis' drawn cases; ``fixed`` keyword
    arguments are forced and ``transform`` applied to both. A derandomized profile (ci) draws
    the cases Hypothesis would draw for the test without its docstring, looking ahead
    (:func:`hypothesis_property`)."""

    def prepare(case: Case) -> Case:
        case = case.with_kwargs(**fixed) if fixed else case
        case = replace(case, backend=active_config().backend)
        return transform(case) if transform else case

    def decorate(test: Callable) -> Callable:
        strategy = cases_for(utility, **fixed)
        derandomized = settings.default.derandomize  # the profile is loaded before the suite
        return hypothesis_property(
            test,
            strategy.map(transform) if transform else strategy,
            examples=[prepare(case) for case in mesh_examples.examples(utility)],
            fixed_seed=docstring_free_seed(test) if derandomized else None,
        )

    return decorate


def hypothesis_property(
    test: Callable,
    cases: st.SearchStrategy[Case],
    examples: Sequence[Case] = (),
    fixed_seed: int | None = None,
    with_settings: settings | None = None,
) -> Callable:
    """``test(harness, case)`` as a Hypothesis test of ``cases``, the explicit ``examples``
    first (under ``with_settings``, else the loaded profile). With a ``fixed_seed`` its draws
    come from that seed and it runs looking ahead (:mod:`conformance.look_ahead`): the next
    case is drawn while the ranks run this one, and only a property with a failing case runs a
    second, plain time."""

    def hypothesis_test(body: Callable) -> Callable:
        wrapped = given(case=cases)(body)
        if with_settings is not None:
            wrapped = with_settings(wrapped)
        if fixed_seed is not None:
            wrapped = seed(fixed_seed)(wrapped)
        for case in examples:
            wrapped = example(case=case)(wrapped)
        return wrapped

    plain = hypothesis_test(test)
    if fixed_seed is None:
        return plain
    ahead = hypothesis_test(_stopping_at_failure(test))

    @functools.wraps(plain)
    def looking_ahead(*args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        run_looking_ahead(kwargs["harness"], lambda: ahead(*args, **kwargs), lambda: plain(*args, **kwargs))

    return looking_ahead


def _stopping_at_failure(test: Callable) -> Callable:
    """``test`` for a look-ahead pass: any failure stops the pass (Hypothesis does not see it)."""

    @functools.wraps(test)
    def stopping(*args: Any, **kwargs: Any) -> None:
        try:
            test(*args, **kwargs)
        except (Exception, pytest.fail.Exception) as exc:
            raise LookAheadStopped(f"{type(exc).__name__}: {exc}") from exc

    return stopping


def with_unsupported_leaf(case: Case) -> Case:
    """``case`` with an unsupported object appended to the root dict."""
    root = case.state_dict
    assert isinstance(root, DictSpec)
    return replace(
        case,
        state_dict=DictSpec((*root.items, ("__unsupported__", UnsupportedSpec("set"))), root.kind),
    )


def assert_conforms(harness: Harness, case: Case) -> None:
    """Fail with every rank's first differences and a replay command unless ``case`` conforms."""
    __tracebackhide__ = True
    require_utilities(harness, case.utility)
    if case.world_size not in harness.config.world_sizes:
        return  # an explicit 2x2 example in a run on other world sizes: nothing to check
    if out_of_time():
        pytest.skip(TIME_LIMIT_REACHED)
    if harness.look_ahead is not None:
        harness.look_ahead.push(case)  # judged when the next case arrives
        return
    report = harness.check(case)
    if not report.passed:
        raise CaseFailure(report)


MISSING = "missing utility"
TIME_LIMIT_REACHED = "time limit reached: not run (or cut short)"


def require_utilities(harness: Harness, utility: str) -> None:
    """Fail when the target lacks ``utility`` (or a utility of the law), skip when its
    expected file declares every missing one absent."""
    __tracebackhide__ = True
    missing = harness.missing(utility)
    if not missing:
        return
    undeclared = [u for u in missing if u not in harness.divergences.absent]
    if undeclared:
        pytest.fail(
            f"{MISSING}: target {harness.config.target} lacks {', '.join(undeclared)} "
            f"(declare it in absent = [...] of the expected file if that is intended)",
            pytrace=False,
        )
    pytest.skip(f"target {harness.config.target} lacks {', '.join(missing)} (declared absent)")


def law(name: str):
    """Mark a test function as checking the cross-utility law ``name`` (for ``--only``)."""

    def mark(fn):
        fn.utility = f"law:{name}"
        return fn

    return mark
