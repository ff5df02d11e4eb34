"""Benchmark: how many cases per second does the real path run, and where does a case's time go?

For each utility of the utility table and each world size, draws ``--cases`` cases as the ci profile
does (derandomized) and runs each through the same path as the suite: the case job on a
persistent world (``Harness.world``), the oracle, the comparison and the known-divergence
excuse. The rank side runs a benchmark-only job that mirrors ``conformance.runner.run_case``
with timers around materialising (``LiveCall``), the target call and observing. Prints, per
utility, cases/s and the mean milliseconds per case of:

  draw     Hypothesis drawing the case (its engine included: time between two test calls)
  ser      driver serialisation: pickling the job, unpickling the ranks' results
  mat      rank side: materialising the inputs (slowest rank)
  call     rank side: the target call (slowest rank)
  obs      rank side: observing the outcome (slowest rank)
  wait     the rest of the world round trip: dispatch, transfer, ranks out of step, the
           world's health check after a case that raised, a restart after blocked ranks
  oracle   ``conformance.utilities.expected_outcomes``
  compare  comparing every rank with the oracle, locating and excusing differences

``real/s`` is the rate of the suite's own path, measured on the same cases in a second pass:
a suite property as a ci run runs it, looking ahead (``conformance.look_ahead``: Hypothesis
draws the next case while the ranks run this one, and the oracle is computed meanwhile);
``cases/s`` is the rate of the timed pass, which runs the parts one after the other to time
each.

Then the spawn-per-case baseline measured in the same run (a fresh world per case, set up as
the harness sets it up, the case run, the world closed: the way PyTorch's own distributed
tests run) and the ratio cases/s / spawn rate (issue 13's goals: 300 at world size 2, 150 at 4).

    python benchmarks/bench_cases.py [--sizes 2,4] [--cases 60] [--only UTIL[,UTIL]] [--fresh 3]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import given, seed

from benchmarks.draw_fingerprint import derandomized
from conformance import wire
from conformance.case import Case
from conformance.check import CaseAborted, CaseFailure, check_case, located
from conformance.compare import compare_outcomes
from conformance.harness import Harness, HarnessConfig
from conformance.observation import Outcome
from conformance.properties import assert_conforms, hypothesis_property
from conformance.runner import LiveCall
from conformance.targets import load_target
from conformance.utilities import UTILITY, UTILITY_NAMES, expected_outcomes, result_root
from conformance.world import JobFailed, World

GOALS = {2: 300.0, 4: 150.0}
BENCH_SEED = 20261129  # both passes draw the same cases
PARTS = ("draw", "ser", "mat", "call", "obs", "wait", "oracle", "compare")


@dataclass
class TimedOutcome:
    """A rank's outcome with the seconds its three steps took."""

    outcome: Outcome
    materialise: float
    call: float
    observe: float

    @property
    def may_desync(self) -> bool:  # the world treats this job's results as run_case's
        return self.outcome.may_desync


def timed_run_case(case: Case, target_name: str) -> TimedOutcome:
    """World job: ``conformance.runner.run_case`` with timers around its three steps."""
    target = load_target(target_name)
    fn = target.function(case.utility)
    if fn is None:
        raise LookupError(f"target {target_name!r} has no {case.utility}")
    start = time.perf_counter()
    inputs = LiveCall(case)
    built = time.perf_counter()
    if inputs.args is None:
        outcome = inputs.returned(None)
        return TimedOutcome(outcome, built - start, 0.0, time.perf_counter() - built)
    try:
        result = fn(*inputs.args, **inputs.kwargs)
    except Exception as exc:
        called = time.perf_counter()
        outcome = inputs.raised(exc, target.file)
    else:
        called = time.perf_counter()
        outcome = inputs.returned(result)
    return TimedOutcome(outcome, built - start, called - built, time.perf_counter() - called)


@dataclass
class Tally:
    """Seconds spent per part over the cases of one utility at one world size."""

    cases: int = 0
    failed: int = 0  # cases whose job failed (hang, crash, harness error): not in the means
    restarts: int = 0  # world restarts (after ranks left blocked): their cost is in "wait"
    wall: float = 0.0
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))

    def add(self, other: Tally) -> None:
        self.cases += other.cases
        self.failed += other.failed
        self.restarts += other.restarts
        self.wall += other.wall
        for part, seconds in other.parts.items():
            self.parts[part] += seconds

    @property
    def rate(self) -> float:
        return self.cases / self.wall if self.wall else 0.0


def run_one(harness: Harness, case: Case, tally: Tally) -> None:
    """One case through the real path, its parts added to ``tally``."""
    target = harness.config.target
    world = harness.world(case.world_size)
    start = time.perf_counter()
    payload = pickle.dumps((timed_run_case, (case, target), {}))
    dumped = time.perf_counter()
    results: list[TimedOutcome] = world.run(timed_run_case, case, target)
    ran = time.perf_counter()
    # the driver unpickles each rank's result once: time that again on a copy
    blobs = [wire.dumps(r) for r in results]
    loads_start = time.perf_counter()
    for blob in blobs:
        pickle.loads(blob)
    loads = time.perf_counter() - loads_start
    observed = [r.outcome for r in results]
    oracle_start = time.perf_counter()
    expected = expected_outcomes(case)
    oracle_end = time.perf_counter()
    root = result_root(case)
    diffs = [d for r in range(case.world_size) for d in compare_outcomes(expected[r], observed[r], r, root)]
    diffs = located(case, diffs)
    if diffs:
        harness.divergences.excuse(case, diffs, False)
    compared = time.perf_counter()
    slowest = max(results, key=lambda r: r.materialise + r.call + r.observe)
    rank_side = slowest.materialise + slowest.call + slowest.observe
    # world.run pickles the job and unpickles the results itself: the copies timed here
    # stand for those, and stay out of the case's wall time
    serialisation = (dumped - start) + loads
    tally.parts["ser"] += serialisation
    tally.parts["mat"] += slowest.materialise
    tally.parts["call"] += slowest.call
    tally.parts["obs"] += slowest.observe
    tally.parts["wait"] += max(0.0, (ran - dumped) - rank_side - serialisation)
    tally.parts["oracle"] += oracle_end - oracle_start
    tally.parts["compare"] += compared - oracle_end
    tally.wall += (ran - dumped) + (compared - oracle_start)
    del payload


def measure(harness: Harness, utility: str, size: int, cases: int) -> tuple[Tally, list[Case]]:
    """Draw ``cases`` cases of ``utility`` at ``size`` (derandomized) and run each."""
    tally = Tally()
    drawn: list[Case] = []
    last = [time.perf_counter()]

    @seed(BENCH_SEED)
    @derandomized(cases)
    @given(case=UTILITY[utility].cases((size,)))
    def run(case: Case) -> None:
        now = time.perf_counter()
        tally.parts["draw"] += now - last[0]
        tally.wall += now - last[0]
        drawn.append(case)
        try:
            run_one(harness, case, tally)
            tally.cases += 1
        except JobFailed:
            tally.failed += 1
        last[0] = time.perf_counter()

    world = harness.world(size)
    restarts = getattr(world, "restarts", 0)
    run()
    tally.restarts = getattr(world, "restarts", 0) - restarts
    return tally, drawn


def measure_real(harness: Harness, utility: str, size: int, cases: int) -> float:
    """Cases per second of the suite's path on the same derandomized draws: a suite property
    (``hypothesis_property``, looking ahead as in a ci run) whose test asserts that each case
    conforms (known divergences excuse). A failing case stops the property; its cases count."""
    ran = [0]

    def test(harness: Harness, case: Case) -> None:
        ran[0] += 1
        assert_conforms(harness, case)

    prop = hypothesis_property(
        test, UTILITY[utility].cases((size,)), fixed_seed=BENCH_SEED, with_settings=derandomized(cases)
    )
    start = time.perf_counter()
    try:
        prop(harness=harness)
    except (CaseFailure, CaseAborted) as exc:
        lines = str(exc).splitlines()
        print(f"  {utility} at {size} ranks: a case failed (its cases still count):")
        print("\n".join(f"    {line}" for line in lines[:12] + ["..."] * (len(lines) > 12)))
    return ran[0] / (time.perf_counter() - start)


def fresh_world_seconds(harness: Harness, cases: list[Case]) -> float:
    """Median seconds to spawn a world (with the harness's setup jobs), run one case on it
    (the real ``check_case``) and close it."""
    samples = []
    for case in cases:
        start = time.perf_counter()
        with World(case.world_size, harness.config.backend, setup=harness.setup_jobs()) as world:
            check_case(world, case, harness.config.target, harness.divergences)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def row(name: str, tally: Tally, real: float) -> str:
    n = max(tally.cases, 1)
    means = " ".join(f"{tally.parts[p] / n * 1e3:>7.2f}" for p in PARTS)
    notes = [f"{tally.failed} failed"] * bool(tally.failed) + [f"{tally.restarts} restarts"] * bool(
        tally.restarts
    )
    note = f"  ({', '.join(notes)})" if notes else ""
    return f"{name:<28} {tally.cases:>5} {real:>7.1f} {tally.rate:>7.1f} {means} {tally.wall / n * 1e3:>8.2f}{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,4")
    parser.add_argument("--cases", type=int, default=60, help="cases drawn per utility and size")
    parser.add_argument("--only", default="", help="comma-separated utilities (default: all)")
    parser.add_argument("--fresh", type=int, default=3, help="cases run on a fresh world each")
    parser.add_argument("--target", default="impl")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    utilities = [u for u in args.only.split(",") if u] or list(UTILITY_NAMES)
    unknown = [u for u in utilities if u not in UTILITY]
    if unknown:
        parser.error(f"unknown utility {unknown[0]!r}; known: {', '.join(UTILITY_NAMES)}")
    harness = Harness(HarnessConfig(target=args.target, world_sizes=sizes))
    try:
        for size in sizes:
            harness.world(size).run(len, ())  # started and set up before the clock runs
            measure(harness, utilities[0], size, 5)  # one-time imports and caches, untimed
            print(f"\nworld size {size}, target {args.target}: mean ms per case")
            print(
                f"{'utility':<28} {'cases':>5} {'real/s':>7} {'cases/s':>7} "
                + " ".join(f"{p:>7}" for p in PARTS)
                + "    total"
            )
            total, rates, first = Tally(), {}, {}
            for utility in utilities:
                tally, drawn = measure(harness, utility, size, args.cases)
                rates[utility] = measure_real(harness, utility, size, args.cases)
                print(row(utility, tally, rates[utility]), flush=True)
                total.add(tally)
                first[utility] = drawn
            # the suite average: every utility's cases in the time they took together
            average = len(utilities) / sum(1 / rates[u] for u in utilities)
            print(row("all (suite average)", total, average))
            baseline_utility = "gather_state_dict" if "gather_state_dict" in first else utilities[0]
            fresh = fresh_world_seconds(harness, first[baseline_utility][: args.fresh])
            goal = GOALS.get(size)
            print(
                f"spawn per case ({baseline_utility}, median of {min(args.fresh, len(first[baseline_utility]))}):"
                f" {fresh * 1e3:.0f} ms/case = {1 / fresh:.2f} cases/s"
            )
            for name, rate in ((baseline_utility, rates[baseline_utility]), ("suite average", average)):
                verdict = (
                    ""
                    if goal is None
                    else f" (goal {goal:.0f}x: {'met' if rate * fresh >= goal else 'not met'})"
                )
                print(f"  {name}: {rate:.1f} cases/s = {rate * fresh:.0f}x the spawn rate{verdict}")
    finally:
        harness.close()


if __name__ == "__main__":
    main()
