"""Benchmark: what does running a case through the world cost?

Measures, at each world size, a Shard(0) -> Replicate gather of a small DTensor:
  1. bare    - the call itself, timed inside a warm rank (no harness);
  2. world   - the same call as one job through the persistent world (dispatch + results back);
  3. fresh   - a new world spawned, the call, the world closed (as MultiProcessTestCase does).
Prints all three and the ratios world/bare (goal: <= 2) and fresh/world (goal: >= 100).

    python benchmarks/bench_world.py [--sizes 2,4] [--calls 200] [--fresh 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance.world import World, context


def gather_small_dtensor() -> tuple[int, ...]:
    """One Shard(0) -> Replicate gather of an 8x4 float32 DTensor; returns the full shape."""
    import torch
    from torch.distributed.tensor import DTensor, Replicate, Shard

    ctx = context()
    mesh = ctx.mesh((ctx.world_size,))
    local = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4) + ctx.rank
    dt = DTensor.from_local(local, mesh, [Shard(0)], run_check=False)
    full = dt.redistribute(mesh, [Replicate()]).to_local()
    return tuple(full.shape)


def time_bare_calls(calls: int) -> float:
    """Median seconds per call, measured on the rank (rank 0's figure is reported)."""
    import torch.distributed as dist

    gather_small_dtensor()  # warm up
    samples = []
    for _ in range(calls):
        dist.barrier()
        start = time.perf_counter()
        gather_small_dtensor()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(size: int, calls: int, fresh_runs: int) -> tuple[float, float, float]:
    with World(size) as world:
        world.run(gather_small_dtensor)  # mesh built, caches warm
        bare = world.run(time_bare_calls, calls)[0]
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            world.run(gather_small_dtensor)
            samples.append(time.perf_counter() - start)
        through_world = statistics.median(samples)
    fresh_samples = []
    for _ in range(fresh_runs):
        start = time.perf_counter()
        with World(size) as world:
            world.run(gather_small_dtensor)
        fresh_samples.append(time.perf_counter() - start)
    return bare, through_world, statistics.median(fresh_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,4")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--fresh", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'ranks':>5} {'bare ms':>9} {'world ms':>9} {'fresh ms':>10} {'world/bare':>11} {'fresh/world':>12}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        bare, through_world, fresh = measure(size, args.calls, args.fresh)
        print(
            f"{size:>5} {bare * 1e3:>9.3f} {through_world * 1e3:>9.3f} {fresh * 1e3:>10.1f}"
            f" {through_world / bare:>11.2f} {fresh / through_world:>12.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
