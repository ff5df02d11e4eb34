"""Properties of check_state_dict_similarity: a bool for any pair, arguments untouched."""

from conformance.properties import assert_conforms, property_of


@property_of("check_state_dict_similarity")
def test_check_state_dict_similarity(harness, case):
    """CONTRACT check_state_dict_similarity: True iff the pair rule (copy_state_dict step 2 without local
    shapes) holds; never raises, arguments untouched (rule 1); matches the oracle on every rank."""
    assert_conforms(harness, case)
