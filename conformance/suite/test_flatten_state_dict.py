"""Properties of flatten_state_dict: dot-joined keys, object paths, duplicate keys rejected."""

from conformance.properties import assert_conforms, property_of


@property_of("flatten_state_dict")
def test_flatten_state_dict(harness, case):
    """CONTRACT flatten_state_dict: dot-joined keys to the same leaf objects plus object paths, depth-first;
    a duplicate flat key raises ValueError; matches the oracle on every rank."""
    assert_conforms(harness, case)
