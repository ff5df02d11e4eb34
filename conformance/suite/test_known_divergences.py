"""Every known divergence of the target must still reproduce from its replay case.

An entry that reproduces is reported as xfailed (its reason shown); one that no longer
reproduces passes unexpectedly (XPASS): the target was fixed and the entry can go.
"""

import pytest

from conformance.case import Case
from conformance.divergences import load_divergences
from conformance.harness import active_config


def pytest_generate_tests(metafunc):
    if "divergence" in metafunc.fixturenames:
        entries = load_divergences(active_config().expected_name).entries
        metafunc.parametrize("divergence", entries, ids=[e.id for e in entries])


def test_known_divergence_reproduces(harness, divergence, request):
    request.applymarker(pytest.mark.xfail(reason=f"{divergence.id}: {divergence.reason}", strict=False))
    case = Case.from_blob(divergence.replay)
    if reason := harness.supports(*divergence.utilities):
        pytest.skip(reason)
    report = harness.check(case, excuse=False)
    matched = [line for line in report.diffs if divergence.applies(case, line)]
    assert not matched, f"{divergence.id} reproduces: {matched[0]}"
