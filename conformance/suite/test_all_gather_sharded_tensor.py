"""Properties of all_gather_sharded_tensor: the full tensor from any chunk layout."""

from conformance.properties import assert_conforms, property_of


@property_of("all_gather_sharded_tensor")
def test_all_gather_sharded_tensor(harness, case):
    """CONTRACT all_gather_sharded_tensor: every rank gets a new contiguous full tensor, each element from
    the shard covering it (any layout/dtype, uncovered zero); matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("all_gather_sharded_tensor", pg="world")
def test_all_gather_sharded_tensor_pg(harness, case):
    """CONTRACT all_gather_sharded_tensor, pg: with pg given explicitly as the default group object,
    every rank gets the same full tensor as with pg=None; matches the oracle on every rank."""
    assert_conforms(harness, case)
