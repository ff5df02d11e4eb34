"""Properties of distribute_state_dict: every rank loads its own full state dict."""

from conformance.properties import assert_conforms, property_of


@property_of("distribute_state_dict")
def test_distribute_state_dict(harness, case):
    """CONTRACT distribute_state_dict: each rank loads its own full_state_dict as broadcast_state_dict steps
    1-3 do, checks raising only on failing ranks before any write; matches the oracle on every rank."""
    assert_conforms(harness, case)
