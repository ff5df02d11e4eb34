"""Properties of check_state_dict_similarity: a bool for any pair, arguments untouched."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for


@given(case=cases_for("check_state_dict_similarity"))
def test_check_state_dict_similarity(harness, case):
    assert_conforms(harness, case)
