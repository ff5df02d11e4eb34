"""Properties of flatten_state_dict: dot-joined keys, object paths, duplicate keys rejected."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for


@given(case=cases_for("flatten_state_dict"))
def test_flatten_state_dict(harness, case):
    assert_conforms(harness, case)
