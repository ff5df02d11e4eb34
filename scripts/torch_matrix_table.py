"""Print the torch release matrix: one row per ``conformance-torch-<release>.json`` report.

Usage: ``python scripts/torch_matrix_table.py [REPORT ...]`` (default: every
``conformance-torch-*.json`` in the working directory). Exits 1 when some release has a
failed property or a known divergence that no longer reproduces, or when no report is found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("release", "passed", "failed", "known", "no longer", "cases", "seconds")


def row(path: Path) -> tuple[str, ...]:
    """The table row of one run's JSON report (``run --json``)."""
    report = json.loads(path.read_text())
    summary = report["summary"]
    release = path.stem.removeprefix("conformance-torch-")
    return (
        f"{release} ({report['torch_version']})",
        str(summary.get("passed", 0)),
        str(summary.get("failed", 0) + summary.get("error", 0)),
        str(summary.get("xfailed", 0)),
        str(summary.get("xpassed", 0)),
        str(summary.get("cases", 0)),
        f"{summary.get('seconds', 0):.0f}",
    )


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [COLUMNS, *rows]]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(Path.cwd().glob("conformance-torch-*.json"))
    if not paths:
        print(
            "error: no conformance-torch-*.json report here; run `nox -s torch_matrix` first", file=sys.stderr
        )
        return 1
    rows = [row(p) for p in paths]
    print(table(rows))
    return int(any(r[2] != "0" or r[4] != "0" for r in rows))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
