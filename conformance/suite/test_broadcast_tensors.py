"""Properties of broadcast_tensors: named full tensors from rank 0 into local entries."""

from conformance.properties import assert_conforms, property_of


@property_of("broadcast_tensors")
def test_broadcast_tensors(harness, case):
    """CONTRACT broadcast_tensors: each named full tensor is broadcast from group rank 0 and stored as in
    broadcast_state_dict step 3 (DTensor shape mismatch raised on every rank); matches the oracle."""
    assert_conforms(harness, case)
