"""Properties of copy_state_dict: validated before writing, destination tensors returned."""

from conformance.properties import assert_conforms, property_of, with_unsupported_leaf


@property_of("copy_state_dict")
def test_copy_state_dict(harness, case):
    assert_conforms(harness, case)


@property_of("copy_state_dict", non_blocking=True)
def test_copy_state_dict_non_blocking(harness, case):
    assert_conforms(harness, case)


@property_of("copy_state_dict", type_check=True, transform=with_unsupported_leaf)
def test_copy_state_dict_type_check(harness, case):
    assert_conforms(harness, case)
