"""Cross-utility laws: two routes to the same state must agree on every rank."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for, law


@law("offload_after_gather")
@given(case=cases_for("law:offload_after_gather"))
def test_gather_with_cpu_offload_is_offload_after_gather(harness, case):
    assert_conforms(harness, case)


@law("copy_into_cpu_copy")
@given(case=cases_for("law:copy_into_cpu_copy"))
def test_copy_into_create_cpu_state_dict_is_offload(harness, case):
    assert_conforms(harness, case)


@law("flatten_roundtrip")
@given(case=cases_for("law:flatten_roundtrip"))
def test_unflatten_inverts_flatten(harness, case):
    assert_conforms(harness, case)


@law("broadcast_is_distribute")
@given(case=cases_for("law:broadcast_is_distribute"))
def test_broadcast_equals_distribute_when_every_rank_holds_full(harness, case):
    assert_conforms(harness, case)
