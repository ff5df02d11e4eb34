"""Properties of distribute_state_dict: every rank loads its own full state dict."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for


@given(case=cases_for("distribute_state_dict"))
def test_distribute_state_dict(harness, case):
    assert_conforms(harness, case)
