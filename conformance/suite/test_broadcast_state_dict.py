"""Properties of broadcast_state_dict: rank 0's full state dict loaded on every rank."""

from conformance.properties import assert_conforms, property_of


@property_of("broadcast_state_dict")
def test_broadcast_state_dict(harness, case):
    assert_conforms(harness, case)


@property_of("broadcast_state_dict", strict=True)
def test_broadcast_state_dict_strict(harness, case):
    assert_conforms(harness, case)


@property_of("broadcast_state_dict", cpu_offload=True)
def test_broadcast_state_dict_cpu_offload(harness, case):
    assert_conforms(harness, case)


@property_of("broadcast_state_dict", pg="copy")
def test_broadcast_state_dict_pg(harness, case):
    assert_conforms(harness, case)
