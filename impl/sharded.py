"""ShardedTensor -> full tensor, placing every shard by its metadata (any dim, any rank order)."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from ._comm import all_gather_flat, as_bytes, group_device, group_or_default


def _offsets_key(meta) -> tuple[int, ...]:
    return tuple(meta.shard_offsets) + tuple(meta.shard_sizes)


def _numel(sizes) -> int:
    n = 1
    for s in sizes:
        n *= int(s)
    return n


def all_gather_sharded_tensor(
    sharded_tensor: ShardedTensor,
    pg: dist.ProcessGroup | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Collective over ``pg`` (default group if None): every rank returns the full tensor.

    The result is a new contiguous tensor of the global shape and dtype on ``device`` (or the
    group's default device), assembled from every shard at its metadata offsets.
    """
    pg = group_or_default(pg)
    gather_device = group_device(pg, device)
    shards_meta = list(sharded_tensor.metadata().shards_metadata)
    size = dist.get_world_size(pg)
    # Bytes each group rank contributes: its shards in a canonical order (by offsets, sizes).
    per_rank: list[list] = [[] for _ in range(size)]
    for meta in shards_meta:
        group_rank = dist.get_group_rank(pg, cast(Any, meta.placement).rank())
        per_rank[group_rank].append(meta)
    for metas in per_rank:
        metas.sort(key=_offsets_key)
    dtype = sharded_tensor.dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    rank_bytes = [sum(_numel(m.shard_sizes) for m in metas) * itemsize for metas in per_rank]
    width = max(rank_bytes, default=0)

    full = torch.zeros(tuple(sharded_tensor.size()), dtype=dtype, device=gather_device)
    if width == 0:
        return full

    local = sorted(sharded_tensor.local_shards(), key=lambda s: _offsets_key(s.metadata))
    parts = [as_bytes(s.tensor.to(gather_device)) for s in local]
    send = torch.zeros(width, dtype=torch.uint8, device=gather_device)
    if parts:
        packed = torch.cat(parts)
        send[: packed.numel()] = packed
    gathered = all_gather_flat(send, pg)

    for group_rank, metas in enumerate(per_rank):
        pos = group_rank * width
        for meta in metas:
            nbytes = _numel(meta.shard_sizes) * itemsize
            chunk = gathered[pos : pos + nbytes].view(dtype).reshape(tuple(meta.shard_sizes))
            pos += nbytes
            index = tuple(
                slice(int(o), int(o) + int(s))
                for o, s in zip(meta.shard_offsets, meta.shard_sizes, strict=True)
            )
            full[index] = chunk
    return full
