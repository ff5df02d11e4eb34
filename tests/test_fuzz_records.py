"""What ``fuzz`` saves: one file per bug (keyed by utility, field and leaf kind), which
``replay`` reads back like any other form of a case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.case import Case, load_case
from conformance.check import CaseReport
from conformance.compare import Difference
from conformance.fuzz import FailureKey, failure_keys, write_failure
from strategies.spec import DictSpec, DTensorSpec, PlacementSpec, TensorSpec

SHARD = (PlacementSpec("shard", (("dim", 0),)),)


def _case(seed: int, rows: int) -> Case:
    """A gather of two DTensors and a plain tensor; ``seed`` and ``rows`` vary the case."""
    spec = DictSpec(
        (
            ("w", DTensorSpec(TensorSpec((rows, 2), "float32"), (2,), SHARD)),
            ("v", DTensorSpec(TensorSpec((rows + 1,), "float32"), (2,), SHARD)),
            ("t", TensorSpec((3,), "int64")),
        )
    )
    return Case("gather_state_dict", 2, seed, spec)


def _report(case: Case, *diffs: Difference) -> CaseReport:
    return CaseReport(case, "tests.broken_target", list(diffs))


#: What one planted bug looks like on two ranks and leaves of one case and a leaf of another:
#: (observed, expected) of each difference, per field the bug shows in.
ONE_BUG = {
    "data": [("[4]=1.5", "[4]=0.0"), ("[5]=-2.0", "[5]=0.0"), ("[9]=7.0", "[9]=0.0")],
    "dtype": [
        ("torch.float64", "torch.float32"),
        ("torch.float64", "torch.bfloat16"),
        ("torch.int64", "torch.uint32"),
    ],
}


@pytest.mark.parametrize("field", sorted(ONE_BUG))
def test_one_bug_on_several_ranks_leaves_and_cases_is_one_key(field):
    (a, b, c) = ONE_BUG[field]
    first = _report(
        _case(seed=3, rows=5),
        Difference(0, "state_dict", ("w",), field, *a),
        Difference(1, "state_dict", ("v",), field, *b),
    )
    again = _report(_case(seed=8, rows=9), Difference(1, "state_dict", ("v",), field, *c))
    texts = {d.render() for r in (first, again) for d in r.diffs}
    assert len(texts) == 3  # three different texts ...
    assert len(failure_keys(first) | failure_keys(again)) == 1  # ... of one bug


@pytest.mark.parametrize(
    ("field", "path"),
    [("shape", ("w",)), ("data", ("t",))],
    ids=["another field", "another leaf kind"],
)
def test_another_field_or_leaf_kind_is_another_key(field, path):
    report = _report(
        _case(seed=3, rows=5),
        Difference(0, "state_dict", ("w",), "data", "[4]=1.5", "[4]=0.0"),
        Difference(0, "state_dict", path, field, "(4, 2)", "(5, 2)"),
    )
    assert len(failure_keys(report)) == 2


def _forms(case: Case, tmp_path: Path) -> dict[str, str]:
    """Every form ``replay`` takes a case in: blob, JSON text, case file, files fuzz saves."""
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps(case.to_json()))
    keys = frozenset({FailureKey(case.utility, "data", "DTensor")})
    difference = write_failure(tmp_path, keys, case, "impl", {"differences": []})
    hang = frozenset({FailureKey(case.utility, "job", "hang")})
    fault = write_failure(tmp_path, hang, case, "impl", {"report": "rank 1: stuck"})
    return {
        "blob": case.to_blob(),
        "JSON text": json.dumps(case.to_json()),
        "case file": str(case_file),
        "fuzz difference file": str(difference),
        "fuzz fault file": str(fault),
    }


def test_load_case_reads_every_form_fuzz_and_users_give(tmp_path):
    case = _case(seed=3, rows=5)
    for form, text in _forms(case, tmp_path).items():
        assert load_case(text) == case, form
