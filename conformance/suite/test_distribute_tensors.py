"""Properties of distribute_tensors: (DTensor, full tensor) pairs become the DTensor's piece."""

from conformance.properties import assert_conforms, property_of


@property_of("distribute_tensors")
def test_distribute_tensors(harness, case):
    """CONTRACT distribute_tensors: each (DTensor, full tensor) pair under keys becomes that DTensor, its
    local tensor overwritten with its piece; other entries untouched; matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("distribute_tensors", meta=True)
def test_distribute_tensors_meta(harness, case):
    """CONTRACT distribute_tensors, meta DTensor: with meta=True (meta local DTensors), each pair becomes a
    new DTensor of the same mesh/placements/shape/dtype on the mesh's device; matches the oracle."""
    assert_conforms(harness, case)
