"""Fingerprint of the derandomized draws, and what a draw costs.

Draws the first ``--examples`` cases (derandomized, as the ci profile draws them) of every
utility of the utility table and every law of ``LAW_CASES`` at each world-size configuration, hashes
their blobs (``Case.to_blob()``), and prints one line per strategy: its hash, the cases drawn
and the mean CPU milliseconds per draw (Hypothesis' engine included). The last line is the hash
of all of them. An optimisation of the strategies must leave every hash unchanged: the
recorded known divergences of torch depend on the exact cases the ci profile draws.

    python benchmarks/draw_fingerprint.py [--examples 40] [--sizes 2,4:2] [--only UTIL]
        [--expect HASH]   # exit 1 unless the total hash is HASH

With the defaults the total is bec513d118e13f93 (Hypothesis 6.170), both for the strategies
before issue 13's caching (commit 2c55fc0) and after it. A derandomized run's seed derives
from the source of the test function in :func:`draw_cases`: editing it changes every hash with
the strategies unchanged, so record a new total against unchanged strategies first.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conformance.case import Case
from conformance.case_strategies import LAW_CASES
from conformance.utilities import TABLE


def derandomized(examples: int) -> settings:
    """The ci profile's way of drawing (derandomized, no database), ``examples`` cases, no
    shrinking and no health checks."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def draw_cases(strategy: st.SearchStrategy[Case], examples: int) -> list[Case]:
    """The first ``examples`` cases a derandomized run draws from ``strategy``."""
    drawn: list[Case] = []

    @derandomized(examples)
    @given(case=strategy)
    def run(case: Case) -> None:
        drawn.append(case)

    run()
    return drawn


def fingerprint(cases: list[Case]) -> str:
    digest = hashlib.sha256()
    for case in cases:
        digest.update(case.to_blob().encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument(
        "--sizes", default="2,4:2", help="world-size configurations, ':'-separated (default 2,4:2)"
    )
    parser.add_argument("--only", default="", help="comma-separated utilities or laws")
    parser.add_argument("--expect", default="", help="exit 1 unless the total hash is this")
    args = parser.parse_args()
    configs = [tuple(int(s) for s in part.split(",")) for part in args.sizes.split(":")]
    only = {u for u in args.only.split(",") if u}
    factories = {**{u.name: u.cases for u in TABLE}, **LAW_CASES}
    total = hashlib.sha256()
    print(f"{'strategy':<34} {'sizes':>6} {'hash':>16} {'cases':>5} {'cpu ms':>8}")
    for name, factory in factories.items():
        if only and name not in only:
            continue
        for sizes in configs:
            start = time.process_time()  # CPU time: a busy machine's waits are not draws
            cases = draw_cases(factory(sizes), args.examples)
            elapsed = time.process_time() - start
            h = fingerprint(cases)
            total.update(f"{name} {sizes} {h}\n".encode())
            label = ",".join(map(str, sizes))
            print(
                f"{name:<34} {label:>6} {h:>16} {len(cases):>5} {elapsed / len(cases) * 1e3:>8.2f}",
                flush=True,
            )
    result = total.hexdigest()[:16]
    print(f"total {result}")
    if args.expect and args.expect != result:
        print(f"fingerprint changed: expected {args.expect}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
