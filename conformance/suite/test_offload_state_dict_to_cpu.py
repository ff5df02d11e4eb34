"""Properties of offload_state_dict_to_cpu: every tensor on CPU, kinds and containers kept."""

from conformance.properties import assert_conforms, property_of, with_unsupported_leaf


@property_of("offload_state_dict_to_cpu")
def test_offload_state_dict_to_cpu(harness, case):
    assert_conforms(harness, case)


@property_of("offload_state_dict_to_cpu", ranks_only=(1,))
def test_offload_state_dict_to_cpu_ranks_only(harness, case):
    assert_conforms(harness, case)


@property_of("offload_state_dict_to_cpu", type_check=True, transform=with_unsupported_leaf)
def test_offload_state_dict_to_cpu_type_check(harness, case):
    assert_conforms(harness, case)
