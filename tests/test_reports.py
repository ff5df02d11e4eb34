"""What ``run`` reports: the JSON report (against its published schema), the one summary
line, JUnit for stale known divergences, and failure messages free of Hypothesis' dump."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from conformance.case import Case
from conformance.plugin import summary_line
from strategies.spec import DictSpec, TensorSpec
from tests.cli_helpers import cli

SCHEMA = json.loads((Path(__file__).parent.parent / "conformance" / "report.schema.json").read_text())
PLANTED = ["--target", "tests.broken_target", "--only", "gather_state_dict", "--world-sizes", "2"]


def validate(report: dict) -> None:
    """``report`` conforms to the published schema (draft 2020-12)."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(report)


def _scalar_case(kind: str) -> Case:
    """A gather of one 0-dim tensor under a root dict of ``kind``: tests.broken_target gets
    it right for a dict and returns a dict for an OrderedDict."""
    return Case("gather_state_dict", 2, 3, DictSpec((("step", TensorSpec((), "int64")),), kind))


def _divergence_file(path: Path) -> Path:
    """Two entries for tests.broken_target: one it shows, one that no longer reproduces."""
    path.write_text(
        "[[divergence]]\n"
        'id = "ordered-dict-becomes-dict"\n'
        'utility = "gather_state_dict"\n'
        'reason = "the planted bug rebuilds every dict as a plain dict"\n'
        'field = "container"\n'
        'observed = "dict"\n'
        'expected = "OrderedDict"\n'
        'torch = ">=2.0"\n'
        f'replay = "{_scalar_case("ordered_dict").to_blob()}"\n'
        "\n"
        "[[divergence]]\n"
        'id = "stale-entry"\n'
        'utility = "gather_state_dict"\n'
        'reason = "a symptom the target does not show"\n'
        'field = "dtype"\n'
        'observed = "float64"\n'
        'expected = "float32"\n'
        f'replay = "{_scalar_case("dict").to_blob()}"\n'
    )
    return path


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_failures_show_our_message_not_hypothesis_dump(tmp_path, verbose):
    """A failure reads as its difference lines and replay command; Hypothesis' falsifying
    example never shows, its reproduce_failure hint only with -v. One summary line, the
    JSON's own figures."""
    report_path = tmp_path / "report.json"
    args = [*PLANTED, "--expected", "none", "--max-examples", "10", "--profile", "ci"]
    result = cli("run", *args, "--json", str(report_path), *(["-v"] if verbose else []))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Falsifying example" not in out and "Failing test case" not in out, out[-3000:]
    assert ("reproduce_failure" in out) == verbose, out[-3000:]
    report = json.loads(report_path.read_text())
    failed = [r for r in report["results"] if r["outcome"] == "failed"]
    assert failed
    for result_ in failed:
        for failure in result_["failures"]:
            assert failure["replay"] in out
            for diff in failure["differences"][:5]:  # the message shows five per rank at most
                assert f"  {diff['message']}\n" in out
    assert [line for line in out.splitlines() if "cases/s" in line] == [
        line for line in out.splitlines() if line.startswith(summary_line(report["summary"]))
    ]
    assert sum("cases/s" in line for line in out.splitlines()) == 1, out[-3000:]


def test_json_report_carries_every_difference_and_the_divergence_file(tmp_path):
    """Each failed case keeps all its differences as data; the report names the target and
    divergence files, the entries with their torch ranges, the excused counts per entry, the
    entries that matched nothing, and the replay command of a stale entry; it validates."""
    report_path = tmp_path / "report.json"
    expected = _divergence_file(tmp_path / "expected.toml")
    result = cli(
        "run", *PLANTED, "--expected", str(expected), "--max-examples", "3", "--profile", "ci",
        "--json", str(report_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    validate(report)
    assert report["target_file"].endswith("broken_target.py")
    divergences = report["divergences"]
    assert divergences["file"] == report["divergence_file"] == str(expected)
    ranges = {e["id"]: e["torch"] for e in divergences["active"]}
    assert ranges == {"ordered-dict-becomes-dict": ">=2.0", "stale-entry": None}
    assert divergences["unused"] == ["stale-entry"]
    assert divergences["excused"]["ordered-dict-becomes-dict"] > 0
    assert divergences["excused"] == report["summary"]["excused"]

    by_property = {r["property"]: r for r in report["results"]}
    stale = by_property["test_known_divergence_reproduces[stale-entry]"]
    assert stale["outcome"] == "xpassed"
    assert (
        stale["replay"]
        == f"python -m conformance replay --target tests.broken_target {_scalar_case('dict').to_blob()}"
    )
    failures = [f for r in report["results"] if r["outcome"] == "failed" for f in r["failures"]]
    assert failures
    for failure in failures:
        assert failure["differences"], failure
        assert all(d["field"] != "container" for d in failure["differences"])  # excused instead
        assert {d["rank"] for d in failure["differences"]} <= {0, 1}


def test_json_schema_refuses_a_renamed_or_missing_field(tmp_path):
    """The schema is strict: a report with a field renamed, or missing, fails validation."""
    report_path = tmp_path / "report.json"
    result = cli(
        "run", "--target", "impl", "--only", "flatten_state_dict", "--max-examples", "1",
        "--json", str(report_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    report = json.loads(report_path.read_text())
    validate(report)
    renamed = {**report, "target_path": report.pop("target_file")}
    with pytest.raises(jsonschema.ValidationError):
        validate(renamed)
    summary = dict(report["summary"])
    del summary["cases_per_second"]
    with pytest.raises(jsonschema.ValidationError):
        validate({**renamed, "target_file": renamed.pop("target_path"), "summary": summary})


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_junit_marks_a_stale_known_divergence_failed_under_strict(tmp_path, strict):
    """With --strict an entry that no longer reproduces is a failure in the JUnit XML (with
    its replay command as a property); without, it is not."""
    junit = tmp_path / "junit.xml"
    expected = _divergence_file(tmp_path / "expected.toml")
    result = cli(
        "run", "--target", "impl", "--only", "gather_state_dict", "--world-sizes", "2",
        "--max-examples", "1", "--expected", str(expected), "--junit", str(junit),
        *(["--strict"] if strict else []),
    )  # fmt: skip
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    stale = cases["test_known_divergence_reproduces[stale-entry]"]
    assert (stale.find("failure") is not None) == strict, ET.tostring(stale)
    assert result.returncode == (1 if strict else 0), result.stdout[-3000:]
    replays = [p.get("value") for p in stale.iter("property") if p.get("name") == "replay"]
    assert replays == [f"python -m conformance replay --target impl {_scalar_case('dict').to_blob()}"]
