"""Cross-utility laws: two routes to the same state must agree on every rank."""

from conformance.properties import assert_conforms, law, property_of


@law("offload_after_gather")
@property_of("law:offload_after_gather")
def test_gather_with_cpu_offload_is_offload_after_gather(harness, case):
    """CONTRACT laws, offload_after_gather: gather_state_dict(sd, cpu_offload=True) equals
    offload_state_dict_to_cpu(gather_state_dict(sd)) on every rank (aliasing/pinning/stride left open)."""
    assert_conforms(harness, case)


@law("copy_into_cpu_copy")
@property_of("law:copy_into_cpu_copy")
def test_copy_into_create_cpu_state_dict_is_offload(harness, case):
    """CONTRACT laws, copy_into_cpu_copy: copy_state_dict(sd, create_cpu_state_dict(sd)) holds what
    offload_state_dict_to_cpu(sd) holds, on every rank (aliasing/pinning/stride left open)."""
    assert_conforms(harness, case)


@law("flatten_roundtrip")
@property_of("law:flatten_roundtrip")
def test_unflatten_inverts_flatten(harness, case):
    """CONTRACT laws, flatten_roundtrip: unflatten_state_dict(*flatten_state_dict(sd)) equals the oracle's
    unflattening of sd (kinds not restored, per CONTRACT unflatten_state_dict) on every rank."""
    assert_conforms(harness, case)


@law("broadcast_is_distribute")
@property_of("law:broadcast_is_distribute")
def test_broadcast_equals_distribute_when_every_rank_holds_full(harness, case):
    """CONTRACT laws, broadcast_is_distribute: broadcast_state_dict from rank 0 and distribute_state_dict
    with the full dict on every rank leave equal local_state_dicts on every rank."""
    assert_conforms(harness, case)
