"""Properties of unflatten_state_dict: nested dicts and lists rebuilt from a mapping."""

from conformance.properties import assert_conforms, property_of


@property_of("unflatten_state_dict")
def test_unflatten_state_dict(harness, case):
    """CONTRACT unflatten_state_dict: nested plain dicts/lists rebuilt from the flat dict and mapping,
    leaves the same objects, missing mapping key raises KeyError; matches the oracle on every rank."""
    assert_conforms(harness, case)
