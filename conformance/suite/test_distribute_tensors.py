"""Properties of distribute_tensors: (DTensor, full tensor) pairs become the DTensor's piece."""

from hypothesis import given

from conformance.properties import assert_conforms, cases_for


@given(case=cases_for("distribute_tensors"))
def test_distribute_tensors(harness, case):
    assert_conforms(harness, case)


@given(case=cases_for("distribute_tensors", meta=True))
def test_distribute_tensors_meta(harness, case):
    assert_conforms(harness, case)
