"""Properties of distribute_state_dict: every rank loads its own full state dict."""

from conformance.properties import assert_conforms, property_of


@property_of("distribute_state_dict")
def test_distribute_state_dict(harness, case):
    assert_conforms(harness, case)
