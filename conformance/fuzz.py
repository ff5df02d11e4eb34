"""``python -m conformance fuzz``: draw cases until a time budget, save each new failure.

Cases come from the same strategies as the suite (the ``fuzz`` profile's spirit: many
examples, no derandomisation). Each failure is shrunk by Hypothesis, deduplicated by a
signature of its first difference, and saved as a case file with its replay command.
Ctrl-C stops cleanly and keeps everything found so far.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.database import InMemoryExampleDatabase

from conformance.case import Case, replay_command
from conformance.case_strategies import CASES, LAW_CASES
from conformance.check import CaseAborted, CaseReport
from conformance.harness import Harness, HarnessConfig

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``1h`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        from conformance.cli import UsageError

        raise UsageError(f"--time takes a positive duration such as 90s, 10m or 1h; got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


#: Fields whose observed / expected values name the bug (a kind, a dtype, an exception type);
#: for the others (data, shapes, keys) the values differ from case to case.
_CATEGORICAL = ("kind", "container", "class", "device", "dtype", "raised", "pinned", "shared")


def signature(report: CaseReport) -> str:
    """What makes two failures the same bug: utility, and the first difference's argument
    root, field and leaf kind (with its observed / expected values where they are categories)."""
    if not report.diffs:
        return f"{report.case.utility}: no difference"
    first = report.diffs[0]
    leaf = first.leaf.kind if first.leaf else "?"
    key = f"{report.case.utility}: {first.root} {first.field} on {leaf}"
    if first.field in _CATEGORICAL:
        observed = re.sub(r":.*", "", str(first.observed))  # an exception's type, not its message
        key += f" ({observed}, expected {first.expected})"
    return key


class Fuzzer:
    """Round-robin over utilities and laws, one short Hypothesis run at a time."""

    def __init__(self, harness: Harness, out: Path, budget: float, names: list[str], target: str) -> None:
        self.harness, self.out, self.budget, self.names, self.target = harness, out, budget, names, target
        self.start = time.monotonic()
        self.failures: dict[str, Path] = {}
        self.known = {json.loads(p.read_text()).get("signature") for p in out.glob("*.json")}
        self._last_line = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def out_of_time(self) -> bool:
        return self.elapsed >= self.budget

    def run(self) -> None:
        for name in itertools.cycle(self.names):
            if self.out_of_time():
                return
            self._batch(name)

    def _batch(self, name: str) -> None:
        strategy = (LAW_CASES[name] if name.startswith("law:") else CASES[name])(
            self.harness.config.world_sizes
        )
        failing: list[tuple[Case, CaseReport]] = []

        @settings(
            max_examples=25,
            deadline=None,
            database=InMemoryExampleDatabase(),
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(case=strategy)
        def prop(case: Case) -> None:
            if self.out_of_time():
                return  # let the batch finish quickly; nothing is judged after the budget
            try:
                report = self.harness.check(case)
            except CaseAborted as exc:  # a hang, a dead or a blocked rank: saved as it is, not shrunk
                self.save_fault(case, exc)
                raise
            self.progress()
            if not report.passed:
                failing.append((case, report))
                raise AssertionError(report.diffs[0].render())

        try:
            prop()
        except CaseAborted:
            return
        except Exception:
            if not failing:
                raise
            self.save(failing[-1][1])  # Hypothesis replays the shrunk example last

    def save_fault(self, case: Case, exc: CaseAborted) -> None:
        """Save a case that hung, killed a rank or left ranks blocked, with its report."""
        self._write(f"{case.utility}: did not finish ({exc.kind})", case, {"report": str(exc)})

    def save(self, report: CaseReport) -> None:
        self._write(
            signature(report),
            report.case,
            {"differences": [d.to_json() for d in report.diffs[:20]]},
        )

    def _write(self, key: str, case: Case, details: dict) -> None:
        if key in self.known or key in self.failures:
            return
        digest = hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
        path = self.out / f"{case.utility.replace(':', '-')}-{digest}.json"
        record = {
            "signature": key,
            "replay": replay_command(case, self.target),
            **details,
            "case": case.to_json(),
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        self.failures[key] = path
        self.progress(force=True)
        print(f"\nnew failure: {key}\n  saved to {path}", file=sys.stderr)

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < 0.5:
            return
        self._last_line = now
        cases = self.harness.cases_run
        rate = cases / self.elapsed if self.elapsed else 0.0
        minutes, seconds = divmod(int(self.elapsed), 60)
        print(
            f"\rfuzz: {cases} cases, {rate:.1f} cases/s, {len(self.failures)} new failures, "
            f"{minutes:02d}:{seconds:02d} of {int(self.budget) // 60:02d}:{int(self.budget) % 60:02d}",
            end="",
            file=sys.stderr,
            flush=True,
        )


def cmd_fuzz(args: Any) -> int:
    from conformance.targets import UTILITIES

    budget = parse_duration(args.time)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = HarnessConfig.from_args(args)
    harness = Harness(config)
    only = list(args.only) or list(UTILITIES)
    names = only + [law for law in LAW_CASES if not args.only]
    fuzzer = Fuzzer(harness, out, budget, names, args.target)
    print(
        f"fuzzing {args.target} for {args.time} on world sizes {config.world_sizes}; failures go to {out}/",
        file=sys.stderr,
    )
    interrupted = False
    try:
        fuzzer.run()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping", file=sys.stderr)
    finally:
        harness.close(polite=not interrupted)
    fuzzer.progress(force=True)
    print(
        f"\n{harness.cases_run} cases in {fuzzer.elapsed:.0f}s; {len(fuzzer.failures)} new failure(s)",
        file=sys.stderr,
    )
    for key, path in fuzzer.failures.items():
        print(f"  {path}: {key}")
    return 1 if fuzzer.failures else 0
