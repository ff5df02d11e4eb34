"""Unit tests of the harness pieces that need no world: cases, comparison, divergences."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.case import Case, CaseError, load_case
from conformance.case_strategies import CASES
from conformance.compare import compare_outcomes, tensor_mismatch
from conformance.divergences import Divergence, DivergenceFileError, Divergences, load_divergences
from conformance.observation import ANY, Container, Outcome, RaisedObs, TensorObs, Tolerance, ValueObs
from strategies.spec import DictSpec, TensorSpec, ValueSpec

ALL_CASES = st.one_of([strategy((2, 4)) for strategy in CASES.values()])


@settings(max_examples=60, deadline=None)
@given(case=ALL_CASES)
def test_cases_survive_json_and_blob_round_trips(case):
    assert Case.from_json(case.to_json()) == case
    assert Case.from_blob(case.to_blob()) == case
    assert load_case(case.to_blob()) == case


def test_bad_case_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(CaseError, match="case blob is damaged"):
        Case.from_blob("sdc1:not-base64!!")
    with pytest.raises(CaseError, match="a case blob starts with"):
        Case.from_blob("xyz")
    with pytest.raises(CaseError, match="cannot read case file"):
        load_case(str(tmp_path / "missing.json"))
    with pytest.raises(CaseError, match="not valid JSON"):
        load_case("{oops")
    with pytest.raises(CaseError, match="not a valid case"):
        load_case('{"utility": "x"}')


def test_bitwise_comparison_tells_nan_and_signed_zero():
    nan = torch.tensor([math.nan, 1.0])
    assert tensor_mismatch(nan, nan.clone()) == ""
    assert "data differs" in tensor_mismatch(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert "data differs at [1]" in tensor_mismatch(torch.tensor([1, 2]), torch.tensor([1, 3]))
    assert "dtype" in tensor_mismatch(torch.tensor([1]), torch.tensor([1.0]))
    assert "shape" in tensor_mismatch(torch.zeros(2), torch.zeros(3))
    complex_nan = torch.tensor([complex(math.nan, 1)])
    assert tensor_mismatch(complex_nan, complex_nan.clone()) == ""


def test_tolerance_applies_only_where_the_expected_leaf_allows_it():
    close = (torch.tensor([1.0]), torch.tensor([1.0 + 1e-7]))
    assert tensor_mismatch(*close) != ""
    assert tensor_mismatch(*close, Tolerance(1e-5, 1e-5)) == ""


def _tensor(data, **facts):
    return TensorObs(
        "Tensor", "cpu", str(data.dtype).removeprefix("torch."), tuple(data.shape), data, **facts
    )


def test_difference_lines_name_rank_path_and_field():
    expected = Outcome(Container("dict", ("a",), (Container("list", (0,), (_tensor(torch.zeros(2)),)),)))
    observed = Outcome(
        Container(
            "dict", ("a",), (Container("tuple", (0,), (_tensor(torch.zeros(2, dtype=torch.float64)),)),)
        )
    )
    diffs = compare_outcomes(expected, observed, rank=1)
    assert "rank 1, state_dict['a']: container is tuple, expected list" in diffs
    assert "rank 1, state_dict['a'][0]: dtype is torch.float64, expected torch.float32" in diffs


def test_any_leaves_facts_open_and_raised_messages_are_substrings():
    expected = Outcome(_tensor(torch.ones(1), aliases=ANY))
    observed = Outcome(_tensor(torch.ones(1), aliases="state_dict['x']"))
    assert compare_outcomes(expected, observed, 0) == []
    assert (
        compare_outcomes(
            Outcome(RaisedObs("ValueError", "['a']")),
            Outcome(RaisedObs("ValueError", "at state_dict['a']: bad")),
            0,
        )
        == []
    )
    diffs = compare_outcomes(Outcome(RaisedObs("ValueError", "['a']")), Outcome(ValueObs("int", 1)), 0)
    assert diffs == ["rank 0, state_dict: returned int 1, expected to raise ValueError(\"['a']\")"]


def _case() -> Case:
    return Case(
        "gather_state_dict", 2, 0, DictSpec((("a", TensorSpec((2,), "float32")), ("b", ValueSpec(1))))
    )


def test_a_divergence_excuses_only_the_lines_it_matches():
    import re

    entry = Divergence(
        "kinds",
        ("gather_state_dict",),
        "why",
        re.compile(r"container is dict, expected OrderedDict"),
        "sdc1:",
    )
    divergences = Divergences((entry,))
    lines = [
        "rank 0, state_dict: container is dict, expected OrderedDict",
        "rank 0, state_dict['a']: data differs",
    ]
    left, used = divergences.excuse(_case(), lines)
    assert left == ["rank 0, state_dict['a']: data differs"]
    assert used == {"kinds": 1}
    other_utility = Case("offload_state_dict_to_cpu", 2, 0, _case().state_dict)
    assert divergences.excuse(other_utility, lines[:1])[0] == lines[:1]


def test_a_scoped_divergence_applies_only_to_cases_in_scope():
    import re

    entry = Divergence(
        "st",
        ("gather_state_dict",),
        "why",
        re.compile("data differs"),
        "sdc1:",
        scope="sharded_tensor_not_dim0_in_rank_order",
    )
    assert not entry.applies(_case(), "rank 0, state_dict['a']: data differs")


def test_divergence_files_are_validated(tmp_path):
    assert load_divergences("none").entries == ()
    with pytest.raises(DivergenceFileError, match="cannot read known-divergence file"):
        load_divergences(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[divergence]]\nid = "x"\nutility = "gather_state_dict"\nreason = "r"\nmatch = "("\nreplay = "sdc1:"\n'
    )
    with pytest.raises(DivergenceFileError, match="bad match regex"):
        load_divergences(str(bad))
    bad.write_text('[[divergence]]\nid = "x"\n')
    with pytest.raises(DivergenceFileError, match="lacks the field"):
        load_divergences(str(bad))
    bad.write_text(
        '[[divergence]]\nid = "x"\nutility = "u"\nreason = "r"\nmatch = "m"\nreplay = "sdc1:"\nscope = "nope"\n'
    )
    with pytest.raises(DivergenceFileError, match="unknown scope"):
        load_divergences(str(bad))
