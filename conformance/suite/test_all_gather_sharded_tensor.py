"""Properties of all_gather_sharded_tensor: the full tensor from any chunk layout."""

from conformance.properties import assert_conforms, property_of


@property_of("all_gather_sharded_tensor")
def test_all_gather_sharded_tensor(harness, case):
    assert_conforms(harness, case)


@property_of("all_gather_sharded_tensor", pg="world")
def test_all_gather_sharded_tensor_pg(harness, case):
    assert_conforms(harness, case)
