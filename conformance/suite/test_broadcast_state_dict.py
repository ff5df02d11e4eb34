"""Properties of broadcast_state_dict: rank 0's full state dict loaded on every rank."""

from conformance.properties import assert_conforms, property_of


@property_of("broadcast_state_dict")
def test_broadcast_state_dict(harness, case):
    """CONTRACT broadcast_state_dict (steps 1-3): group rank 0's flat full_state_dict is loaded into
    every rank's local_state_dict in place (checks agreed first); matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("broadcast_state_dict", strict=True)
def test_broadcast_state_dict_strict(harness, case):
    """CONTRACT broadcast_state_dict, strict (step 4): with strict=True, local keys group rank 0 did not
    announce are removed after loading; matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("broadcast_state_dict", cpu_offload=True)
def test_broadcast_state_dict_cpu_offload(harness, case):
    """CONTRACT broadcast_state_dict, cpu_offload (step 3): with cpu_offload=True, new plain entries are
    stored on CPU and DTensor entries become dtensor.cpu(); matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("broadcast_state_dict", pg="copy")
def test_broadcast_state_dict_pg(harness, case):
    """CONTRACT broadcast_state_dict, pg: with pg a separate group over all ranks, the utility uses that
    group (its rank 0 is the source); matches the oracle on every rank."""
    assert_conforms(harness, case)
