"""Every known divergence of the target must still reproduce from its replay case, exactly.

- reproduces (its symptom shows, nothing else unexcused): xfailed, with its reason;
- no longer reproduces (the replay now conforms fully): XPASS, a failure under ``--sdc-strict``;
- changed (the replay diverges in a way no entry excuses): a failure showing the new
  differences and the replay command;
- a replay that cannot run (a damaged blob, a utility the entry does not name): a failure.
"""

import pytest

from conformance.case import Case, replay_command
from conformance.check import CaseFailure
from conformance.divergences import load_divergences
from conformance.harness import active_config
from conformance.properties import require_utilities
from conformance.world import WorldUnavailable


class KnownDivergenceReproduces(AssertionError):
    """The one outcome the xfail marker accepts: the entry's own symptom, and nothing else."""


def pytest_generate_tests(metafunc):
    if "divergence" in metafunc.fixturenames:
        entries = load_divergences(active_config().expected_name).entries
        metafunc.parametrize("divergence", entries, ids=[e.id for e in entries])


def test_known_divergence_reproduces(harness, divergence, request):
    """CONTRACT known divergences ("torch differs:" lines): each entry of the target's expected file
    reproduces its own symptom from its replay and nothing else (xfail); a conforming replay XPASSes."""
    request.applymarker(
        pytest.mark.xfail(
            reason=f"{divergence.id}: {divergence.reason}",
            raises=KnownDivergenceReproduces,
            strict=active_config().strict,
        )
    )
    case = Case.from_blob(divergence.replay)
    if case.utility not in divergence.utilities:
        pytest.fail(
            f"{divergence.id}: its replay calls {case.utility}, which the entry does not name", pytrace=False
        )
    require_utilities(harness, case.utility)
    if case.backend != harness.config.backend:
        pytest.skip(
            f"{divergence.id}: its replay is a {case.backend} case; this run is {harness.config.backend}"
        )
    replay = replay_command(case, harness.config.target)
    request.node.user_properties.append(("replay", replay))  # reported for XPASS too
    try:
        report = harness.check(case, count=False, against_baseline=False)  # the entry is about the target
    except WorldUnavailable as exc:  # e.g. an NCCL world of more ranks than this machine has GPUs
        pytest.skip(f"{divergence.id}: {exc}")
    mine = [diff for entry_id, diff in report.excused if entry_id == divergence.id]
    if report.diffs:
        lines = "\n".join(f"  {d.render()}" for d in report.diffs[:10])
        raise CaseFailure(
            report,
            f"{divergence.id} changed: its replay diverges in a way no entry excuses:\n{lines}\nreplay: {replay}",
        )
    if mine:
        raise KnownDivergenceReproduces(f"{divergence.id} reproduces: {mine[0].render()}")
