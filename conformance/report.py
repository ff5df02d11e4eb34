"""Results of a suite run: collected from pytest reports, printed as a table, saved as JSON."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from conformance.plugin import SUMMARY_ELSEWHERE, run_stats, unmatched_entries
from conformance.properties import MISSING
from conformance.utilities import UTILITY_NAMES

OUTCOMES = ("passed", "failed", "missing", "xfailed", "xpassed", "skipped", "error")


@dataclass
class Result:
    """One suite test: its outcome, message, the replay command of its (first) failed case or
    of its known divergence, and every failed case as data (``CaseReport.to_json``)."""

    utility: str
    property: str
    outcome: str
    message: str = ""
    replay: str = ""
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunReport:
    target: str
    torch_version: str
    target_file: str
    divergence_file: str
    world_sizes: list[int]
    backend: str
    profile: str
    divergences: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["results"] = [asdict(r) for r in self.results]
        return data

    def table(self) -> str:
        """One row per utility: properties passed, failed, missing from the target, divergences
        still reproducing / no longer reproducing, skipped, and cases executed."""
        cases = self.summary.get("cases_by_utility", {})
        rows = [("utility", "passed", "failed", "missing", "known div.", "no longer", "skipped", "cases")]
        names = [
            u for u in (*UTILITY_NAMES, "laws") if any(r.utility == u for r in self.results) or cases.get(u)
        ]
        for name in names:
            mine = [r for r in self.results if r.utility == name]
            count = {o: sum(r.outcome == o for r in mine) for o in OUTCOMES}
            rows.append(
                (
                    name,
                    str(count["passed"]),
                    str(count["failed"] + count["error"]),
                    str(count["missing"]),
                    str(count["xfailed"]),
                    str(count["xpassed"]),
                    str(count["skipped"]),
                    str(cases.get(name, 0)),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


class Collector:
    """A pytest plugin object gathering one Result per suite test (also under xdist)."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.stats: dict[str, Any] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "conformance/suite/" not in report.nodeid.replace("\\", "/"):
            return
        outcome = _outcome(report)
        if outcome is None:
            return
        message = _message(report)
        if outcome == "failed" and message.startswith(MISSING):
            outcome = "missing"
        module, _, name = report.nodeid.partition("::")
        utility = _utility_of(module, name)
        replays = [value for key, value in report.user_properties if key == "replay"]
        self.results.append(
            Result(
                utility,
                name,
                outcome,
                message,
                replays[0] if replays else "",
                list(getattr(report, "sdc_failures", [])),
            )
        )

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[SUMMARY_ELSEWHERE] = True  # printed after the table, from self.stats

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.stats = dict(run_stats(session.config))
        self.stats["unused"] = [entry.id for entry in unmatched_entries(session.config)]


def _outcome(report: pytest.TestReport) -> str | None:
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if xfail:
            return "xfailed" if report.skipped else "xpassed"
        return report.outcome
    if report.when == "setup" and report.skipped:
        return "xfailed" if xfail else "skipped"
    if report.failed:  # setup or teardown error
        return "error"
    return None


def _message(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail") and report.skipped:
        return str(report.wasxfail)
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    if report.failed:
        text = str(report.longrepr)
        start = max(
            text.find("diverges from the contract"),
            text.find("differs from the baseline"),
            text.find("did not finish (target"),
            text.find(" not run: "),
        )
        if start >= 0:
            text = text[text.rfind("\n", 0, start) + 1 :]
        return "\n".join(line.removeprefix("E").strip() for line in text.splitlines() if line.strip())[:4000]
    return ""


def _utility_of(module: str, name: str) -> str:
    stem = module.rsplit("/", 1)[-1].removesuffix(".py").removeprefix("test_")
    if stem in UTILITY_NAMES:
        return stem
    if stem == "known_divergences":
        match = re.search(r"\[(.+)\]", name)
        return _divergence_utility(match.group(1)) if match else "known_divergences"
    return "laws" if stem == "laws" else stem


_DIVERGENCE_UTILITY: dict[str, str] = {}


def _divergence_utility(entry_id: str) -> str:
    utility = _DIVERGENCE_UTILITY.get(entry_id, "known_divergences")
    return "laws" if utility.startswith("law:") else utility


def remember_divergences(entries: Any) -> None:
    """Let the report attribute divergence replays to their (first) utility."""
    for entry in entries:
        _DIVERGENCE_UTILITY[entry.id] = entry.utilities[0]


def write_json(report: RunReport, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report.to_json(), f, indent=2)
        f.write("\n")
