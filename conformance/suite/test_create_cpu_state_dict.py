"""Properties of create_cpu_state_dict: new CPU storage mirroring every tensor leaf."""

from conformance.properties import assert_conforms, property_of


@property_of("create_cpu_state_dict")
def test_create_cpu_state_dict(harness, case):
    """CONTRACT create_cpu_state_dict: new contiguous CPU buffers of each tensor leaf's kind/shape/dtype,
    aliasing nothing, containers kept (rule 2); matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("create_cpu_state_dict", share_memory=True, pin_memory=False)
def test_create_cpu_state_dict_share_memory(harness, case):
    """CONTRACT create_cpu_state_dict, share_memory: with share_memory=True, pin_memory=False every new
    buffer, empty ones included, is in shared memory; matches the oracle on every rank."""
    assert_conforms(harness, case)


@property_of("create_cpu_state_dict", pin_memory=True)
def test_create_cpu_state_dict_pin_memory(harness, case):
    """CONTRACT create_cpu_state_dict, pin_memory: with pin_memory=True, every non-empty new buffer is pinned,
    or without an accelerator RuntimeError before any allocation; matches the oracle on every rank."""
    assert_conforms(harness, case)
