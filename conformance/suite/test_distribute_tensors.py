"""Properties of distribute_tensors: (DTensor, full tensor) pairs become the DTensor's piece."""

from conformance.properties import assert_conforms, property_of


@property_of("distribute_tensors")
def test_distribute_tensors(harness, case):
    assert_conforms(harness, case)


@property_of("distribute_tensors", meta=True)
def test_distribute_tensors_meta(harness, case):
    assert_conforms(harness, case)
