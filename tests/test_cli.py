"""The command line as a user meets it: exit codes, one-line errors, reports, replay, fuzz."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.case import Case
from strategies.spec import DictSpec, DTensorSpec, PlacementSpec, SeqSpec, TensorSpec
from tests.cli_helpers import ROOT, cli


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2 and one line on stderr holding every fragment."""
    __tracebackhide__ = True
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--target", "no.such.module"], "cannot import target 'no.such.module'"),
        (["run", "--target", "json"], "provides none of the state-dict utilities"),
        (["run", "--world-sizes", "0"], "argument --world-sizes: sizes must lie between 1 and 8"),
        (["run", "--world-sizes", "9"], "argument --world-sizes: sizes must lie between 1 and 8"),
        (["run", "--world-sizes", "two"], "argument --world-sizes: takes integers"),
        (["run", "--only", "gather"], "argument --only: unknown utility 'gather'"),
        (["run", "--jobs", "0"], "--jobs must be at least 1"),
        (["run", "--max-examples", "-5"], "--max-examples must be at least 1"),
        (["run", "--max-examples", "0"], "--max-examples must be at least 1"),
        (["fuzz", "--max-examples", "0"], "--max-examples must be at least 1"),
        (["run", "--time-limit", "soon"], "argument --time-limit: takes seconds"),
        (["run", "--expected", "tests/bad_divergences.toml"], "unknown key 'macth'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "--expected", "/no/such.toml"], "cannot read known-divergence file"),
        (["run", "--placement", "nomodule:Model"], "--placement 'nomodule:Model'"),
        (["replay", "sdc1:garbage!!"], "case blob is damaged"),
        (["replay", "/no/such/case.json"], "cannot read case file"),
        (["fuzz", "--time", "soon"], "--time takes a positive duration"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    assert_usage_error(cli(*args, timeout=60), message)


#: Forks as they were seen in the wild, each with a piece of the line its import fails on.
BROKEN_FORKS = {
    "merge_conflict": (
        "from impl import *  # noqa: F403\n"
        "<<<<<<< HEAD\n"
        "_CHUNKS = 1\n"
        "=======\n"
        "_CHUNKS = 2\n"
        ">>>>>>> upstream\n",
        "<<<<<<<",
    ),
    "bad_annotation": (  # written for a newer torch: torch's module __getattr__ raises
        "import torch\n"
        "from impl import *  # noqa: F403\n"
        "\n"
        "def _create_cpu_state_dict(state_dict, dtype: torch.float8_e3m4 = None):\n"
        "    return state_dict\n",
        "float8_e3m4",
    ),
}


def _import_error(path: Path) -> BaseException:
    """The exception that executing the module at ``path`` raises."""
    try:
        exec(compile(path.read_text(), str(path), "exec", dont_inherit=True), {"__name__": path.stem})
    except Exception as exc:
        return exc
    raise AssertionError(f"{path} imports cleanly")


def _target_commands(module: str, out: Path) -> dict[str, list[str]]:
    """A command line of each command that imports the target."""
    return {
        "run": ["run", "--target", module, "--only", "flatten_state_dict", "--max-examples", "1"],
        "replay": ["replay", "--target", module, _gather_case().to_blob()],
        "fuzz": [
            "fuzz",
            "--target",
            module,
            "--only",
            "flatten_state_dict",
            "--time",
            "5s",
            "--out",
            str(out),
        ],
    }


@pytest.mark.parametrize("command", ["run", "replay", "fuzz"])
@pytest.mark.parametrize("fork", sorted(BROKEN_FORKS))
def test_target_that_raises_on_import_is_a_usage_error(tmp_path, fork, command):
    source, culprit = BROKEN_FORKS[fork]
    module = f"sdc_fork_{fork}"
    path = tmp_path / f"{module}.py"
    path.write_text(source)
    line = 1 + next(i for i, text in enumerate(source.splitlines()) if culprit in text)
    error = _import_error(path)
    message = error.msg if isinstance(error, SyntaxError) else str(error)
    result = cli(*_target_commands(module, tmp_path / "out")[command], timeout=120, path=str(tmp_path))
    assert_usage_error(
        result, module, str(path), type(error).__name__, message, f"{path}:{line}", f"import {module}"
    )


def test_replay_script_of_an_unscripted_utility_is_a_usage_error():
    from conformance.case_strategies import LAW_CASES
    from conformance.script import script_supports
    from conformance.utilities import UTILITY_NAMES

    assert all(script_supports(u) for u in UTILITY_NAMES)
    law = next(iter(LAW_CASES))  # a law's case: two calls, no single call to write
    case = Case(law, 2, 3, _gather_case().state_dict)
    assert_usage_error(cli("replay", "--script", case.to_blob(), timeout=60), law, "--script")


def test_nccl_without_gpus_exits_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    result = cli("run", "--backend", "nccl", timeout=60)
    assert result.returncode == 2
    assert "needs CUDA GPUs" in result.stderr


def test_run_works_where_pytest_does_not_load_the_plugin_itself():
    """A source checkout on PYTHONPATH has no pytest entry point (like autoloading turned off):
    ``run`` loads the suite's plugin itself, else the suite has no ``harness`` fixture."""
    result = cli(
        "run", "--only", "flatten_state_dict", "--max-examples", "2", "--world-sizes", "2",
        env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert "fixture 'harness' not found" not in result.stdout
    assert "0 failed" in result.stdout


def test_list_names_utilities_properties_placements_and_targets():
    result = cli("list", timeout=60)
    assert result.returncode == 0
    for word in ("gather_state_dict", "test_laws::", "strided_shard", "impl =", "torch ="):
        assert word in result.stdout


def test_run_reports_a_planted_bug_with_replay_and_json(tmp_path):
    report_path = tmp_path / "report.json"
    result = cli(
        "run",
        "--target",
        "tests.broken_target",
        "--expected",
        "none",
        "--only",
        "gather_state_dict,offload_state_dict_to_cpu",
        "--max-examples",
        "15",
        "--profile",
        "ci",  # derandomized: the same cases every run
        "--json",
        str(report_path),
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert set(report) == {
        "target",
        "torch_version",
        "target_file",
        "divergence_file",
        "world_sizes",
        "backend",
        "profile",
        "divergences",
        "summary",
        "results",
    }
    assert report["target"] == "tests.broken_target"
    assert set(report["summary"]) >= {"cases", "seconds", "passed", "failed", "xfailed", "xpassed", "skipped"}
    failed = [r for r in report["results"] if r["outcome"] == "failed"]
    # the broken gather may also break the law offload_after_gather, which runs with them
    assert {"gather_state_dict", "offload_state_dict_to_cpu"} <= {r["utility"] for r in failed}
    assert {r["utility"] for r in failed} <= {"gather_state_dict", "offload_state_dict_to_cpu", "laws"}
    gather = next(r for r in failed if r["property"] == "test_gather_state_dict")
    assert gather["replay"].startswith("python -m conformance replay --target tests.broken_target sdc1:")
    assert "gather_state_dict" in result.stdout and "cases" in result.stdout  # the table

    blob = gather["replay"].split()[-1]
    replay = cli("replay", "--target", "tests.broken_target", blob)
    assert replay.returncode == 1
    assert "data differs" in replay.stdout or "ranks_only" in replay.stdout or "difference" in replay.stdout


def test_run_on_impl_conforms(tmp_path):
    result = cli(
        "run", "--target", "impl", "--only", "flatten_state_dict,unflatten_state_dict", "--max-examples", "10"
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "flatten_state_dict" in result.stdout


def _gather_case() -> Case:
    placements = (PlacementSpec("shard", (("dim", 0),)),)
    spec = DictSpec(
        (
            ("w", DTensorSpec(TensorSpec((5, 2), "float32"), (2,), placements)),
            ("t", SeqSpec((TensorSpec((), "int64"),), "tuple")),
        )
    )
    return Case("gather_state_dict", 2, 3, spec)


def test_replay_prints_conformance_and_script_runs_standalone(tmp_path):
    case = _gather_case()
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps(case.to_json()))
    result = cli("replay", "--target", "impl", str(case_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "conforms" in result.stdout
    script = cli("replay", "--script", "--target", "impl", case.to_blob())
    assert script.returncode == 0, script.stderr
    path = tmp_path / "repro.py"
    path.write_text(script.stdout)
    run = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "conforms" in run.stdout


def test_replay_accepts_a_file_fuzz_saved(tmp_path):
    from conformance.fuzz import FailureKey, write_failure

    case = _gather_case()
    keys = frozenset({FailureKey(case.utility, "data", "DTensor")})
    saved = write_failure(tmp_path, keys, case, "impl", {"differences": []})
    result = cli("replay", "--target", "impl", str(saved))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "conforms" in result.stdout


def test_fuzz_stops_after_max_examples(tmp_path):
    examples = 3
    result = cli(
        "fuzz",
        "--target",
        "impl",
        "--only",
        "flatten_state_dict",
        "--max-examples",
        str(examples),
        "--time",
        "40s",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"\n{examples} cases in " in result.stderr, result.stderr[-2000:]


def test_fuzz_saves_failures_and_stops_on_time(tmp_path):
    out = tmp_path / "found"
    result = cli(
        "fuzz",
        "--target",
        "tests.broken_target",
        "--expected",
        "none",
        "--only",
        "gather_state_dict",
        "--time",
        "25s",
        "--out",
        str(out),
    )
    assert result.returncode == 1, result.stderr[-2000:]
    saved = list(out.glob("*.json"))
    assert saved, result.stderr[-2000:]
    record = json.loads(saved[0].read_text())
    assert record["replay"].startswith("python -m conformance replay")
    assert Case.from_json(record["case"]).utility == "gather_state_dict"
    assert "cases/s" in result.stderr
