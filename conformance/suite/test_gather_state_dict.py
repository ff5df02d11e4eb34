"""Properties of gather_state_dict: full tensors of DTensors and ShardedTensors on every rank."""

from conformance.properties import assert_conforms, property_of, with_unsupported_leaf


@property_of("gather_state_dict")
def test_gather_state_dict(harness, case):
    """CONTRACT gather_state_dict: DTensors and ShardedTensors become full plain tensors on every rank,
    plain tensors stay the same object, containers kept (rule 2); matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("gather_state_dict", cpu_offload=True)
def test_gather_state_dict_cpu_offload(harness, case):
    """CONTRACT gather_state_dict, cpu_offload: with cpu_offload=True every gathered or non-CPU plain tensor
    ends up on CPU; matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("gather_state_dict", ranks_only=(0,))
def test_gather_state_dict_ranks_only(harness, case):
    """CONTRACT gather_state_dict, ranks_only (rule 5): with ranks_only=(0,), ranks whose pg rank is not 0 get
    an empty container of the root's kind (or None) yet join every collective; matches the oracle."""
    assert_conforms(harness, case)


@property_of("gather_state_dict", type_check=True, transform=with_unsupported_leaf)
def test_gather_state_dict_type_check_rejects_unsupported(harness, case):
    """CONTRACT gather_state_dict, type_check (rule 4): with type_check=True and an unsupported leaf, every
    rank raises the path-bearing ValueError before any collective; matches the oracle."""
    assert_conforms(harness, case)


@property_of("gather_state_dict", type_check=False, transform=with_unsupported_leaf)
def test_gather_state_dict_no_type_check_copies_unsupported(harness, case):
    """CONTRACT gather_state_dict, non-tensor leaves (rule 3): with type_check=False, an unsupported leaf
    is deep-copied into the result on every rank; matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("gather_state_dict", pg="copy")
def test_gather_state_dict_pg(harness, case):
    """CONTRACT gather_state_dict, pg: with pg a separate group over all ranks, ShardedTensors are gathered
    over that group (DTensors over their mesh); matches the oracle on every rank."""
    assert_conforms(harness, case)
