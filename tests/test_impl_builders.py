"""The builders of distributed inputs (tests/builders.py) reassemble to their global tensors."""

from __future__ import annotations

import torch

from conformance.world import context
from tests.builders import global_tensor, make_sharded


def job_builders() -> list[str]:
    """Each builder's local parts reassemble to its global tensor (checked by slicing)."""
    ctx = context()
    problems = []
    full = global_tensor((5, 3))
    st = make_sharded(full, 0, list(reversed(range(ctx.world_size))))
    for shard in st.local_shards():
        o, s = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        if not torch.equal(shard.tensor, full[o[0] : o[0] + s[0]]):
            problems.append("sharded slice")
    if tuple(st.size()) != (5, 3):
        problems.append("sharded size")
    return problems


def test_builders(world_factory) -> None:
    assert world_factory(2).run(job_builders) == [[], []]
