"""Properties of offload_state_dict_to_cpu: every tensor on CPU, kinds and containers kept."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for, with_unsupported_leaf


@given(case=cases_for("offload_state_dict_to_cpu"))
def test_offload_state_dict_to_cpu(harness, case):
    assert_conforms(harness, case)


@given(case=cases_for("offload_state_dict_to_cpu", ranks_only=(1,)))
def test_offload_state_dict_to_cpu_ranks_only(harness, case):
    assert_conforms(harness, case)


@given(case=cases_for("offload_state_dict_to_cpu", type_check=True).map(with_unsupported_leaf))
def test_offload_state_dict_to_cpu_type_check(harness, case):
    assert_conforms(harness, case)
