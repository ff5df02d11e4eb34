"""``--baseline``: a fork judged by where it differs from the baseline target, beside the contract."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from conformance.compare import compare_observed
from conformance.observation import Container, Outcome, RaisedObs, TensorObs, ValueObs
from tests.cli_helpers import cli
from tests.planted import PlantedBug, write_fork

#: Small derandomized runs: the same cases every time.
# world size 2: which ranks a raise leaves blocked (torch does so in some 4-rank gathers) can
# differ between the target's run and the baseline's, and --baseline compares them exactly
RUN = (
    "--only",
    "gather_state_dict,distribute_state_dict",
    "--profile",
    "ci",
    "--max-examples",
    "10",
    "--world-sizes",
    "2",
)

DISTRIBUTE_LOADS_ZEROS = PlantedBug(
    "baseline-distribute-dtensor-zeros",
    (),
    "distribute_state_dict",
    "                local_state_dict[key] = distribute_tensor(\n                    value.detach().to(device),\n",
    "                local_state_dict[key] = distribute_tensor(\n"
    "                    torch.zeros_like(value).to(device),\n",
    r"local_state_dict\[.*data differs",  # shrunk cases may show only the aliasing: see SYMPTOM
)

SYMPTOM = r"^rank \d, local_state_dict\[.*: (data differs|aliases input is None)"


def _tensor(data: torch.Tensor) -> TensorObs:
    return TensorObs("Tensor", "cpu", "float32", tuple(data.shape), data, stride=data.stride())


def _outcome(weight: torch.Tensor, message: str = "bad key 'x'", last: TensorObs | None = None) -> Outcome:
    """A rank's outcome: a result tree of three leaves, and an argument whose load raised."""
    last = last or _tensor(torch.zeros(2))
    tree = Container("dict", ("w", "step", "last"), (_tensor(weight), ValueObs("int", 3), last))
    return Outcome(tree, {"local_state_dict": RaisedObs("KeyError", message)})


def test_observed_outcomes_compare_exactly():
    weight = torch.tensor([1.0, float("nan"), 0.0])
    assert compare_observed(_outcome(weight), _outcome(weight.clone()), rank=1) == []

    changed = weight.clone()
    changed[2] = -0.0  # bitwise: -0.0 is not 0.0
    (diff,) = compare_observed(_outcome(weight), _outcome(changed), rank=1)
    assert (diff.rank, diff.root, diff.path, diff.field) == (1, "state_dict", ("w",), "data")

    # the baseline's message is not a pattern the target's may merely contain
    (diff,) = compare_observed(_outcome(weight), _outcome(weight, "bad key 'x' (2)"), rank=0)
    assert (diff.root, diff.field, diff.mutated) == ("local_state_dict", "message", True)

    # data on one side only
    no_data = replace(_tensor(torch.zeros(2)), data=None)
    (diff,) = compare_observed(_outcome(weight, last=no_data), _outcome(weight), rank=0)
    assert (diff.path, diff.field) == (("last",), "data")


def _torch_copy(where: Path) -> str:
    import torch.distributed._state_dict_utils as original

    (where / "sdc_baseline_same.py").write_text(Path(original.__file__).read_text())
    return "sdc_baseline_same"


def test_fork_identical_to_torch_conforms_to_its_baseline(tmp_path):
    result = cli("run", "--target", _torch_copy(tmp_path), "--baseline", "torch", *RUN, path=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "baseline: torch = torch.distributed._state_dict_utils" in result.stdout


def test_planted_bug_shows_as_a_change_from_the_baseline(tmp_path):
    fork = write_fork(tmp_path, DISTRIBUTE_LOADS_ZEROS)
    report_path = tmp_path / "report.json"
    result = cli(
        "run", "--target", fork, "--baseline", "torch", *RUN, "--json", str(report_path), path=str(tmp_path)
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    failed = [r for r in json.loads(report_path.read_text())["results"] if r["outcome"] != "passed"]
    assert failed and {r["utility"] for r in failed} == {"distribute_state_dict"}, failed
    changes = [_section(r["message"], "(a) where the target differs from torch") for r in failed]
    assert all(changes), failed
    # the zeros are new tensors: besides their data, they no longer alias the full tensor
    assert all(re.search(SYMPTOM, line) for lines in changes for line in lines), changes
    # contract differences torch lacks may only be on leaves the fork changed (where torch
    # already differs from the contract, the fork differs in another way): nowhere else
    for r, lines in zip(failed, changes, strict=True):
        changed = {_where(line) for line in lines}
        others = _section(r["message"], "contract differences that torch does not have")
        assert {_where(line) for line in others} <= changed, r["message"]


def _where(line: str) -> str:
    """``rank R, root[path]`` of a difference line."""
    return line.split(": ", 1)[0]


def _section(message: str, title: str) -> list[str]:
    """The difference lines listed under ``title`` in a failure message."""
    lines = message.splitlines()
    if not any(line.startswith(title) for line in lines):
        return []
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("rank ")), len(lines))
    return lines[start:end]
