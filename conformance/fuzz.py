"""``python -m conformance fuzz``: draw cases until a time budget, save each new failure.

Cases come from the same strategies as the suite (the ``fuzz`` profile's spirit: many
examples, no derandomisation), until a time budget or ``--max-examples`` per utility and law.
Each failure is shrunk by Hypothesis, deduplicated by the (utility, field, leaf kind) of its
differences, and saved as a file that ``replay`` accepts, with its replay command.
Ctrl-C stops cleanly and keeps everything found so far.

With ``--baseline`` a failure is what fails ``run --baseline``: a difference from the
baseline's outcome, or a contract difference the baseline lacks; the contract differences it
shares with the baseline are recorded in the failure's file (``shared``) but never make one.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.database import InMemoryExampleDatabase

from conformance.case import Case, case_record, replay_command
from conformance.case_strategies import LAW_CASES
from conformance.check import CaseAborted, CaseReport
from conformance.harness import Harness, HarnessConfig
from conformance.scopes import leaf_kind
from conformance.usage import UsageError
from conformance.utilities import case_strategy

_UNITS = {"s": 1, "m": 60, "h": 3600}

#: Examples per Hypothesis run: short runs, so that every utility and law gets its turn often.
BATCH = 25


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``1h`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--time takes a positive duration such as 90s, 10m or 1h; got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class FailureKey(NamedTuple):
    """What makes two differences one bug: the utility, the field that differs and the kind
    of leaf it differs on (``scopes.leaf_kind``). For a case that did not finish, the field
    is ``job`` and the leaf is how it ended (hang, crash, blocked)."""

    utility: str
    field: str
    leaf: str

    def __str__(self) -> str:
        if self.field == "job":
            return f"{self.utility}: did not finish ({self.leaf})"
        return f"{self.utility}: {self.field} on {self.leaf}"


def failure_keys(report: CaseReport) -> frozenset[FailureKey]:
    """The distinct keys of a report's failing differences (from the contract, and from the
    baseline if any), whatever their ranks, paths and values."""
    case = report.case
    return frozenset(
        FailureKey(case.utility, d.field, leaf_kind(case, d)) for d in [*report.changes, *report.diffs]
    )


def write_failure(out: Path, keys: frozenset[FailureKey], case: Case, target: str, details: dict) -> Path:
    """Save a failing case in ``out`` with its keys, replay command and ``details`` (a file
    that ``replay`` accepts); returns its path, named by the utility and the keys."""
    ordered = sorted(keys)
    digest = hashlib.blake2b(repr(ordered).encode(), digest_size=4).hexdigest()
    path = out / f"{case.utility.replace(':', '-')}-{digest}.json"
    record = case_record(
        case,
        keys=[k._asdict() for k in ordered],
        replay=replay_command(case, target),
        **details,
    )
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def recorded_keys(path: Path) -> set[FailureKey]:
    """The keys a file written by ``write_failure`` records (none for any other file)."""
    try:
        record = json.loads(path.read_text())
        return {FailureKey(**k) for k in record.get("keys", [])}
    except (OSError, ValueError, TypeError, AttributeError):
        return set()


class Fuzzer:
    """Round-robin over utilities and laws, one short Hypothesis run at a time."""

    def __init__(
        self,
        harness: Harness,
        out: Path,
        budget: float,
        names: list[str],
        target: str,
        max_examples: int | None = None,
    ) -> None:
        self.harness, self.out, self.budget, self.names, self.target = harness, out, budget, names, target
        self.max_examples = max_examples  # per utility or law; None: until the budget
        self.drawn = dict.fromkeys(names, 0)  # examples generated (not shrinks) per name
        self.start = time.monotonic()
        self.failures: dict[Path, frozenset[FailureKey]] = {}
        self.known = set().union(*(recorded_keys(p) for p in out.glob("*.json")))
        self._last_line = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def out_of_time(self) -> bool:
        return self.elapsed >= self.budget

    def examples_left(self, name: str) -> int:
        """Examples ``name`` may still draw (a batch's worth when --max-examples is not set)."""
        if self.max_examples is None:
            return BATCH
        return self.max_examples - self.drawn[name]

    def run(self) -> None:
        """Batches round-robin until the budget is spent or every name drew its examples."""
        while names := [n for n in self.names if self.examples_left(n) > 0]:
            for name in names:
                if self.out_of_time():
                    return
                self._batch(name)

    def _batch(self, name: str) -> None:
        strategy = case_strategy(name, self.harness.config.world_sizes, self.harness.config.backend)
        failing: list[tuple[Case, CaseReport]] = []

        @settings(
            max_examples=min(BATCH, self.examples_left(name)),
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
            if not failing:  # Hypothesis shrinks only after the first failure
                self.drawn[name] += 1
            try:
                report = self.harness.check(case)
            except CaseAborted as exc:  # a hang, a dead or a blocked rank: saved as it is, not shrunk
                self.save_fault(case, exc)
                raise
            self.progress()
            if not report.passed:
                failing.append((case, report))
                raise AssertionError([*report.changes, *report.diffs][0].render())

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
        self._write(frozenset({FailureKey(case.utility, "job", exc.kind)}), case, {"report": str(exc)})

    def save(self, report: CaseReport) -> None:
        details: dict[str, Any] = {"differences": [d.to_json() for d in report.diffs[:20]]}
        if report.baseline:
            details["baseline"] = report.baseline
            details["changes"] = [d.to_json() for d in report.changes[:20]]
            details["shared"] = [d.to_json() for d in report.shared[:20]]
        self._write(failure_keys(report), report.case, details)

    def _write(self, keys: frozenset[FailureKey], case: Case, details: dict) -> None:
        """Save the case if one of its keys is new; a bug seen again is not saved again."""
        new = keys - self.known
        if not new:
            return
        self.known |= keys
        path = write_failure(self.out, keys, case, self.target, details)
        self.failures[path] = keys
        self.progress(force=True)
        print(f"\nnew failure: {'; '.join(map(str, sorted(new)))}\n  saved to {path}", file=sys.stderr)

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
    from conformance.utilities import UTILITY_NAMES

    budget = parse_duration(args.time)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = HarnessConfig.from_args(args)
    harness = Harness(config)
    only = list(args.only) or list(UTILITY_NAMES)
    names = only + [law for law in LAW_CASES if not args.only]
    fuzzer = Fuzzer(harness, out, budget, names, args.target, args.max_examples)
    limit = f" or {args.max_examples} examples per utility and law" if args.max_examples else ""
    print(
        f"fuzzing {args.target} for {args.time}{limit} on world sizes {config.world_sizes}; "
        f"failures go to {out}/",
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
    for path, keys in fuzzer.failures.items():
        print(f"  {path}: {'; '.join(map(str, sorted(keys)))}")
    return 1 if fuzzer.failures else 0
