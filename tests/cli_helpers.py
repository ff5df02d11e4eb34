"""Running the command line as a user does: ``python -m conformance`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The project folder (this checkout), put on ``PYTHONPATH`` so its copy is the one tested.
ROOT = Path(__file__).resolve().parent.parent


def cli(
    *args: str, timeout: float = 300, path: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m conformance *args`` from ROOT, with ``path`` (if any) before ROOT on
    ``PYTHONPATH`` and ``env`` added to the environment."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(p for p in (path, str(ROOT)) if p)}
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
