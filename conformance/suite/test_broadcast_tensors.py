"""Properties of broadcast_tensors: named full tensors from rank 0 into local entries."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for


@given(case=cases_for("broadcast_tensors"))
def test_broadcast_tensors(harness, case):
    assert_conforms(harness, case)
