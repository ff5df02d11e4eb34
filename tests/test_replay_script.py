"""``replay --script``: the written script reproduces the case against the chosen target.

Every utility's script conforms against ``impl``; against a fork with a planted bug it exits
1 and prints exactly the lines ``replay`` prints for the same case (tracebacks included).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from hypothesis import find, settings

from conformance.case import Case
from conformance.script import standalone_script
from conformance.utilities import UTILITY, UTILITY_NAMES
from strategies.spec import DTensorSpec, ShardedTensorSpec, TensorSpec, iter_leaves

ROOT = Path(__file__).resolve().parent.parent
_TENSORS = (TensorSpec, DTensorSpec, ShardedTensorSpec)


@cache
def small_case(utility: str) -> Case:
    """The simplest drawn case of ``utility`` (world size 2) with a tensor in its state dict."""
    return find(
        UTILITY[utility].cases([2]),
        lambda case: any(isinstance(leaf, _TENSORS) for _, leaf in iter_leaves(case.state_dict)),
        settings=settings(database=None, derandomize=True, max_examples=200),
    )


def python(*args: str, cwd: Path, path: Path | None = None) -> subprocess.CompletedProcess:
    """Run the venv's Python with this checkout (and ``path``) importable first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (path, ROOT) if p)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def verdict(stdout: str) -> list[str]:
    """The lines after the one-line header (``replaying ...`` / ``reproducing ...``)."""
    lines = stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(("replaying ", "reproducing ")))
    return lines[header + 1 :]


@pytest.mark.parametrize("utility", UTILITY_NAMES)
def test_script_of_every_utility_conforms_against_impl(utility, tmp_path):
    case = small_case(utility)
    script = tmp_path / "repro.py"
    script.write_text(standalone_script(case, "impl"))
    run = python(str(script), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert verdict(run.stdout) == ["conforms: every rank observed what the contract expects"]


#: utility -> an override appended to a copy of torch's module, and a regex of its symptom.
FORKS = {
    "copy_state_dict": (
        "def _copy_state_dict(state_dict, copy_state_dict, non_blocking=False, type_check=True):\n"
        "    return copy_state_dict  # planted: copies nothing\n",
        r"data differs|returned dict of \d+, expected to raise ValueError",
    ),
    "create_cpu_state_dict": (
        "def _create_cpu_state_dict(state_dict, pin_memory=False, share_memory=False):\n"
        "    return state_dict  # planted: the input itself\n",
        r"is the input object state_dict",
    ),
    "flatten_state_dict": (
        "def _flatten_state_dict(state_dict):\n"
        "    raise RuntimeError('planted: cannot flatten')  # RAISES HERE\n",
        r"raised RuntimeError: planted: cannot flatten",
    ),
}


@pytest.mark.parametrize("utility", FORKS)
def test_script_against_a_planted_bug_prints_replays_lines(utility, tmp_path):
    import torch.distributed._state_dict_utils as original

    override, symptom = FORKS[utility]
    fork = tmp_path / "sdc_script_fork.py"
    fork.write_text(Path(original.__file__).read_text() + "\n\n" + override)
    case = small_case(utility)
    cli = ("-m", "conformance", "replay", "--target", fork.stem)
    written = python(*cli, "--script", case.to_blob(), cwd=ROOT, path=tmp_path)
    assert written.returncode == 0, written.stderr[-3000:]
    assert f"target._{utility}(" in written.stdout  # the call is in plain sight
    script = tmp_path / "repro.py"
    script.write_text(written.stdout)
    run = python(str(script), cwd=tmp_path, path=tmp_path)
    replay = python(*cli, case.to_blob(), cwd=ROOT, path=tmp_path)
    assert replay.returncode == 1, replay.stdout + replay.stderr[-3000:]
    assert run.returncode == 1, run.stdout + run.stderr[-3000:]
    assert verdict(run.stdout) == verdict(replay.stdout)
    assert any(re.search(symptom, line) for line in verdict(replay.stdout)), replay.stdout
    if "RAISES HERE" in override:  # every rank that raised shows the fork's raising line, and only it
        line = 1 + fork.read_text().splitlines().index(override.splitlines()[1])
        frame = f'File "{fork}", line {line}, in _{utility}'
        assert replay.stdout.count(frame) == case.world_size, replay.stdout
        assert f"{os.sep}conformance{os.sep}" not in replay.stdout, replay.stdout
