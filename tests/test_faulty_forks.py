"""Runs that end: a fork that hangs or kills a rank in ``_gather_state_dict``, end to end.

``run --target <fork> --expected torch --only gather_state_dict,copy_state_dict`` must end on
its own with exit 1, report exactly ``gather_state_dict`` as failing (copy is untouched),
show where the stuck rank is (the ``time.sleep`` line of the fork) or how the dead rank
ended, and leave no process behind. How long it takes is a figure for
``benchmarks/bench_faults.py``; here only a generous bound that a loaded machine meets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.cli_helpers import ROOT
from tests.planted import PlantedBug, planted_source, write_fork
from tests.processes import left_in_session

GATHER_BODY = (
    "    def sharded_tensor_func(value, pg, device, companion_obj):\n        # ShardedTensor does not"
)
HANG = PlantedBug(
    "gather-hangs-on-rank-1",
    (),
    "gather_state_dict",
    GATHER_BODY,
    "    if dist.get_rank() == 1:\n        import time\n\n        time.sleep(3600)  # planted hang\n"
    + GATHER_BODY,
    "",
)
CRASH = PlantedBug(
    "gather-kills-rank-1",
    (),
    "gather_state_dict",
    GATHER_BODY,
    "    if dist.get_rank() == 1:\n        import os\n        import sys\n\n        print('rank 1 gives up', file=sys.stderr, flush=True)\n"
    "        os._exit(3)  # planted death\n" + GATHER_BODY,
    "",
)
LIMIT = 300  # seconds; the figures on a quiet machine are far lower (bench_faults.py)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "conformance"]


def run_fork(bug: PlantedBug, tmp_path, launcher: str = "spawn") -> tuple[int, str, dict, list[str]]:
    """Exit status, output, JSON report, and processes of the run's session still alive."""
    fork = write_fork(tmp_path, bug)
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "conformance"] if launcher == "spawn" else TORCHRUN
    args = [
        *command, "run", "--target", fork, "--expected", "torch", "--launcher", launcher,
        "--only", "gather_state_dict,copy_state_dict", "--world-sizes", "2", "--case-timeout", "10",
        "--max-examples", "10", "--profile", "ci", "--json", str(report),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(tmp_path), str(ROOT)))}
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the run against {fork} did not end within {LIMIT}s")
    return proc.returncode, out, json.loads(report.read_text()), left_in_session(proc.pid)


def _failing(report: dict) -> set[str]:
    return {r["utility"] for r in report["results"] if r["outcome"] in ("failed", "error")}


def test_a_hanging_fork_ends_with_the_stuck_ranks_stack(tmp_path):
    code, out, report, left = run_fork(HANG, tmp_path)
    assert code == 1, out[-3000:]
    assert _failing(report) == {"gather_state_dict"}, out[-3000:]
    line = planted_source(HANG).splitlines().index("        time.sleep(3600)  # planted hang") + 1
    fork_file = str(tmp_path / "sdc_planted_gather_hangs_on_rank_1.py")
    assert f'File "{fork_file}", line {line} in _gather_state_dict' in out, out[-4000:]
    first = next(r for r in report["results"] if r["property"] == "test_gather_state_dict")
    assert "hang on rank(s) 1" in first["message"] and f"line {line}" in first["message"]
    assert first["replay"].startswith("python -m conformance replay")
    assert not left, left


def test_a_fork_that_kills_a_rank_ends_with_its_exit_and_last_words(tmp_path):
    code, out, report, left = run_fork(CRASH, tmp_path)
    assert code == 1, out[-3000:]
    assert _failing(report) == {"gather_state_dict"}, out[-3000:]
    assert "crash on rank(s) 1" in out and "exited with status 3" in out, out[-3000:]
    assert "rank 1 gives up" in out, out[-3000:]  # the dead rank's last stderr lines
    assert not left, left


@pytest.mark.parametrize("bug", [HANG, CRASH], ids=lambda bug: bug.name)
def test_under_torchrun_a_faulty_fork_stops_the_run_and_blames_gather(bug, tmp_path):
    """A torchrun world cannot restart: the run stops at the fault, with the report naming
    ``gather_state_dict`` (not the health check or the next case) and where the rank was."""
    code, out, report, left = run_fork(bug, tmp_path, launcher="torchrun")
    assert code == 1, out[-3000:]
    assert _failing(report) == {"gather_state_dict"}, out[-3000:]
    assert "torchrun world lost: job" in out and "(run_case: gather_state_dict(" in out, out[-3000:]
    if bug is HANG:
        line = planted_source(HANG).splitlines().index("        time.sleep(3600)  # planted hang") + 1
        assert f"line {line} in _gather_state_dict" in out, out[-4000:]
    else:
        assert "crash on rank(s) 1" in out and "rank 1 gives up" in out, out[-3000:]
    assert not left, left
