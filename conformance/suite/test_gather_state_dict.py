"""Properties of gather_state_dict: full tensors of DTensors and ShardedTensors on every rank."""

from conformance.properties import assert_conforms, property_of, with_unsupported_leaf


@property_of("gather_state_dict")
def test_gather_state_dict(harness, case):
    assert_conforms(harness, case)


@property_of("gather_state_dict", cpu_offload=True)
def test_gather_state_dict_cpu_offload(harness, case):
    assert_conforms(harness, case)


@property_of("gather_state_dict", ranks_only=(0,))
def test_gather_state_dict_ranks_only(harness, case):
    assert_conforms(harness, case)


@property_of("gather_state_dict", type_check=True, transform=with_unsupported_leaf)
def test_gather_state_dict_type_check_rejects_unsupported(harness, case):
    assert_conforms(harness, case)


@property_of("gather_state_dict", type_check=False, transform=with_unsupported_leaf)
def test_gather_state_dict_no_type_check_copies_unsupported(harness, case):
    assert_conforms(harness, case)


@property_of("gather_state_dict", pg="copy")
def test_gather_state_dict_pg(harness, case):
    assert_conforms(harness, case)
