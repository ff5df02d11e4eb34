"""Properties of offload_state_dict_to_cpu: every tensor on CPU, kinds and containers kept."""

from conformance.properties import assert_conforms, property_of, with_unsupported_leaf


@property_of("offload_state_dict_to_cpu")
def test_offload_state_dict_to_cpu(harness, case):
    """CONTRACT offload_state_dict_to_cpu: every tensor leaf becomes leaf.to('cpu') keeping its kind (same
    object if already on CPU), containers kept (rule 2); matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("offload_state_dict_to_cpu", ranks_only=(1,))
def test_offload_state_dict_to_cpu_ranks_only(harness, case):
    """CONTRACT offload_state_dict_to_cpu, ranks_only (rule 5): with ranks_only=(1,), ranks other than
    global rank 1 get an empty container of the root's kind (or None); matches the oracle."""
    assert_conforms(harness, case)


@property_of("offload_state_dict_to_cpu", type_check=True, transform=with_unsupported_leaf)
def test_offload_state_dict_to_cpu_type_check(harness, case):
    """CONTRACT offload_state_dict_to_cpu, type_check (rule 4): with type_check=True and an unsupported
    leaf, the calling rank raises the path-bearing ValueError; matches the oracle on every rank."""
    assert_conforms(harness, case)
