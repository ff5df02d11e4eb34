"""Building blocks of the property suite: deferred case strategies and the assertion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, seed, settings
from hypothesis import strategies as st

from conformance import mesh_examples
from conformance.case import Case
from conformance.check import CaseFailure
from conformance.harness import Harness, active_config, out_of_time
from conformance.utilities import case_strategy
from strategies.spec import DictSpec, UnsupportedSpec
from strategies.stable import docstring_free_seed


def cases_for(utility: str, **fixed: Any) -> st.SearchStrategy[Case]:
    """Cases of ``utility`` on the configured world sizes, with ``fixed`` keyword arguments
    forced (a value of ``None`` removes the argument)."""

    def build() -> st.SearchStrategy[Case]:
        sizes = active_config().world_sizes
        strategy = case_strategy(utility, sizes)
        return strategy.map(lambda case: case.with_kwargs(**fixed)) if fixed else strategy

    return st.deferred(build)


def property_of(
    utility: str, *, transform: Callable[[Case], Case] | None = None, **fixed: Any
) -> Callable[[Callable], Callable]:
    """Decorate a suite test: it runs the 2x2 mesh cases of ``utility``
    (:mod:`conformance.mesh_examples`) first, then Hypothesis' drawn cases; ``fixed`` keyword
    arguments are forced and ``transform`` applied to both. A derandomized profile (ci) draws
    the cases Hypothesis would draw for the test without its docstring."""

    def prepare(case: Case) -> Case:
        case = case.with_kwargs(**fixed) if fixed else case
        return transform(case) if transform else case

    def decorate(test: Callable) -> Callable:
        strategy = cases_for(utility, **fixed)
        derandomized = settings.default.derandomize  # the profile is loaded before the suite
        fixed_seed = docstring_free_seed(test) if derandomized else None
        test = given(case=strategy.map(transform) if transform else strategy)(test)
        if fixed_seed is not None:
            test = seed(fixed_seed)(test)
        for case in mesh_examples.examples(utility):
            test = example(case=prepare(case))(test)
        return test

    return decorate


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
