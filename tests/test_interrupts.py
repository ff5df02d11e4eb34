"""Ctrl-C always stops ``fuzz`` within a few seconds, keeping what it found.

``fuzz`` runs against a target with a planted bug (so it finds, shrinks and saves
failures) and gets SIGINT at 20 moments drawn from a fixed seed: during start-up, drawing,
running cases, shrinking, saving, garbage collection, wherever it lands. Each time the
process must be gone within 5 s, leave no rank behind, and every failure it announced as
saved must be a readable case file. On a machine whose run queue is longer than its cores
(``nox -s loaded`` puts 4 busy processes next to the suite) every process runs that many
times slower, so the bound grows with the load measured at the moment (:func:`stop_bound`).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli_helpers import ROOT
from tests.processes import ctrl_c_as_in_a_terminal, left_in_session

MOMENTS = 20
STOP_WITHIN = 5.0  # seconds, on a machine with a core free for every runnable process


def stop_bound() -> float:
    """STOP_WITHIN scaled by how oversubscribed the CPUs are right now (1 when they are not)."""
    return STOP_WITHIN * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def test_sigint_stops_fuzz_within_seconds_keeping_its_findings(tmp_path):
    moments = random.Random(20261129).sample([round(0.5 + 0.25 * i, 2) for i in range(40)], MOMENTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    slow = []
    for i, moment in enumerate(moments):
        out = tmp_path / f"out{i}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conformance",
                "fuzz",
                "--target",
                "tests.broken_target",
                "--only",
                "gather_state_dict",
                "--world-sizes",
                "2",
                "--time",
                "120s",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=ctrl_c_as_in_a_terminal,
        )
        time.sleep(moment)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"fuzz ignored Ctrl-C sent {moment}s after its start") from None
        took = time.monotonic() - sent
        if took > (bound := stop_bound()):
            slow.append(
                f"SIGINT at {moment}s: stopped after {took:.1f}s (bound {bound:.1f}s at this load); "
                f"its last words: {err[-600:]}"
            )
        for saved in re.findall(r"saved to (\S+\.json)", err):
            record = json.loads(Path(saved).read_text())
            assert record["replay"].startswith("python -m conformance replay"), saved
        alive = left_in_session(proc.pid)
        assert not alive, f"SIGINT at {moment}s left {alive}"
    assert not slow, "\n".join(slow)
