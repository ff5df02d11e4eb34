"""``python -m conformance selfcheck``: start a world, run a collective and a DTensor gather."""

from __future__ import annotations

import time

from conformance.world import World, context
from conformance.world.protocol import DEFAULT_START_TIMEOUT


def gather_check() -> bool:
    """Every rank gathers a Shard(0) DTensor of arange and compares with the global tensor."""
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    ctx = context()
    full = torch.arange(ctx.world_size * 3 * 2, dtype=torch.float32).reshape(-1, 2)
    dt = distribute_tensor(full, ctx.mesh((ctx.world_size,)), [Shard(0)])
    return bool(torch.equal(dt.full_tensor(), full))


def selfcheck(sizes: list[int], backend: str) -> int:
    for size in sizes:
        start = time.perf_counter()
        # the world's first job (imports, the first mesh) gets a start's allowance
        with World(size, backend, job_timeout=DEFAULT_START_TIMEOUT) as world:
            ok = world.run(gather_check)
        status = "ok" if all(ok) else "FAILED"
        print(f"world of {size} ({backend}): {status} in {time.perf_counter() - start:.1f}s")
        if not all(ok):
            return 1
    return 0
