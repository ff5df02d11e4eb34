"""Properties of unflatten_state_dict: nested dicts and lists rebuilt from a mapping."""

from conformance.properties import assert_conforms, property_of


@property_of("unflatten_state_dict")
def test_unflatten_state_dict(harness, case):
    assert_conforms(harness, case)
