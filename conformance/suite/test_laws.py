"""Cross-utility laws: two routes to the same state must agree on every rank."""

from conformance.properties import assert_conforms, law, property_of


@law("offload_after_gather")
@property_of("law:offload_after_gather")
def test_gather_with_cpu_offload_is_offload_after_gather(harness, case):
    assert_conforms(harness, case)


@law("copy_into_cpu_copy")
@property_of("law:copy_into_cpu_copy")
def test_copy_into_create_cpu_state_dict_is_offload(harness, case):
    assert_conforms(harness, case)


@law("flatten_roundtrip")
@property_of("law:flatten_roundtrip")
def test_unflatten_inverts_flatten(harness, case):
    assert_conforms(harness, case)


@law("broadcast_is_distribute")
@property_of("law:broadcast_is_distribute")
def test_broadcast_equals_distribute_when_every_rank_holds_full(harness, case):
    assert_conforms(harness, case)
