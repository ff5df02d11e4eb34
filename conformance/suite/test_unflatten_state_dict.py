"""Properties of unflatten_state_dict: nested dicts and lists rebuilt from a mapping."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for


@given(case=cases_for("unflatten_state_dict"))
def test_unflatten_state_dict(harness, case):
    assert_conforms(harness, case)
