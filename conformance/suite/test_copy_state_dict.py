"""Properties of copy_state_dict: validated before writing, destination tensors returned."""

from conformance.properties import assert_conforms, property_of, with_unsupported_leaf


@property_of("copy_state_dict")
def test_copy_state_dict(harness, case):
    """CONTRACT copy_state_dict (steps 1-4): pairs validated before any write, destination tensors written
    in place and returned in the source's container kinds; matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("copy_state_dict", non_blocking=True)
def test_copy_state_dict_non_blocking(harness, case):
    """CONTRACT copy_state_dict, non_blocking (step 3): with non_blocking=True the copy has the same
    observable result and destination contents as a blocking one; matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("copy_state_dict", type_check=True, transform=with_unsupported_leaf)
def test_copy_state_dict_type_check(harness, case):
    """CONTRACT copy_state_dict, type_check (step 1, rule 4): a source with an unsupported leaf raises the
    path-bearing ValueError on the calling rank, destination unwritten; matches the oracle."""
    assert_conforms(harness, case)
