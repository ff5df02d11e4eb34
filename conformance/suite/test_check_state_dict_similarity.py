"""Properties of check_state_dict_similarity: a bool for any pair, arguments untouched."""

from conformance.properties import assert_conforms, property_of


@property_of("check_state_dict_similarity")
def test_check_state_dict_similarity(harness, case):
    assert_conforms(harness, case)
