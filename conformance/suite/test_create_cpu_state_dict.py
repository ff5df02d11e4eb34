"""Properties of create_cpu_state_dict: new CPU storage mirroring every tensor leaf."""

from conformance.properties import assert_conforms, property_of


@property_of("create_cpu_state_dict")
def test_create_cpu_state_dict(harness, case):
    assert_conforms(harness, case)


@property_of("create_cpu_state_dict", share_memory=True, pin_memory=False)
def test_create_cpu_state_dict_share_memory(harness, case):
    assert_conforms(harness, case)


@property_of("create_cpu_state_dict", pin_memory=True)
def test_create_cpu_state_dict_pin_memory(harness, case):
    assert_conforms(harness, case)
