"""Properties of broadcast_tensors: named full tensors from rank 0 into local entries."""

from conformance.properties import assert_conforms, property_of


@property_of("broadcast_tensors")
def test_broadcast_tensors(harness, case):
    assert_conforms(harness, case)
