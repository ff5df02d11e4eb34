"""Benchmark: how long does the world take to detect a hang or a dead rank, and to recover?

For each world size, on a warm world with job timeout T (default 5 s):
  hang   - rank 1 sleeps forever: seconds until ``run`` raises JobFailed("hang") (T plus
           the look at whether the rank is still computing and the stack capture), then
           seconds until the next job has succeeded (kill, respawn, process group, warm-up);
  crash  - rank 1 exits: seconds until JobFailed("crash"), then until the next job succeeded.

    python benchmarks/bench_faults.py [--sizes 2,4] [--timeout 5] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance.world import JobFailed, World, context


def hang_on_rank_1() -> int:
    if context().rank == 1:
        time.sleep(3600)
    return context().rank


def exit_on_rank_1() -> int:
    if context().rank == 1:
        print("rank 1 exits", file=sys.stderr, flush=True)
        os._exit(3)
    time.sleep(0.1)
    return context().rank


def ready() -> int:
    return context().rank


def detect_and_recover(world: World, job) -> tuple[float, float, bool]:
    """(seconds to the JobFailed, seconds from there to the next successful job, stacks seen)."""
    start = time.perf_counter()
    try:
        world.run(job)
        raise SystemExit(f"{job.__name__} did not fail")
    except JobFailed as exc:
        detected = time.perf_counter()
        stacks = any(f.traceback for f in exc.failures.values())
    world.run(ready)
    return detected - start, time.perf_counter() - detected, stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,4")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"job timeout {args.timeout:g}s; median of {args.repeat}")
    print(
        f"{'world size':>10}  {'fault':>5}  {'detect s':>8}  {'recover s':>9}  {'total s':>7}  stack/stderr"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        with World(size, job_timeout=args.timeout) as world:
            world.run(ready)
            for name, job in (("hang", hang_on_rank_1), ("crash", exit_on_rank_1)):
                runs = [detect_and_recover(world, job) for _ in range(args.repeat)]
                detect = statistics.median(r[0] for r in runs)
                recover = statistics.median(r[1] for r in runs)
                stacks = "yes" if all(r[2] for r in runs) else "no"
                print(
                    f"{size:>10}  {name:>5}  {detect:>8.2f}  {recover:>9.2f}  {detect + recover:>7.2f}  {stacks}"
                )


if __name__ == "__main__":
    main()
