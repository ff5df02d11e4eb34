"""Builders of distributed inputs for the impl tests (run on ranks; checked in test_impl_builders).

Every builder starts from a global tensor and computes the local part by plain slicing, so
expected values in the tests are the global tensors themselves.
"""

from __future__ import annotations

import torch
from torch.distributed._shard.sharded_tensor import Shard as STShard
from torch.distributed._shard.sharded_tensor import ShardedTensor, ShardMetadata
from torch.distributed._shard.sharded_tensor.metadata import (
    ShardedTensorMetadata,
    TensorProperties,
)
from torch.distributed.tensor import DTensor, Partial, distribute_tensor

from conformance.world import context


def global_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A deterministic tensor whose values identify their position."""
    n = 1
    for s in shape:
        n *= s
    values = torch.arange(n, dtype=torch.int64).reshape(shape)
    if dtype == torch.bool:
        return values % 3 == 0
    if dtype.is_complex:
        return torch.complex(values.double(), -values.double()).to(dtype)
    return (values % 100).to(dtype)


def make_sharded(full: torch.Tensor, dim: int, owners: list[int], device: str = "cpu") -> ShardedTensor:
    """A ShardedTensor of ``full`` split along ``dim`` into ``len(owners)`` pieces
    (``torch.tensor_split``: uneven, possibly empty), piece i held by rank ``owners[i]``."""
    rank = context().rank
    pieces = torch.tensor_split(full, len(owners), dim=dim)
    metas, local = [], []
    offset = 0
    for owner, piece in zip(owners, pieces, strict=True):
        offsets = [0] * full.dim()
        offsets[dim] = offset
        offset += piece.shape[dim]
        meta = ShardMetadata(
            shard_offsets=offsets,
            shard_sizes=list(piece.shape),
            placement=f"rank:{owner}/{device}",
        )
        metas.append(meta)
        if owner == rank:
            local.append(STShard(piece.clone().to(device), meta))
    global_meta = ShardedTensorMetadata(
        shards_metadata=metas,
        size=full.shape,
        tensor_properties=TensorProperties(dtype=full.dtype),
    )
    return ShardedTensor._init_from_local_shards_and_global_metadata(local, global_meta)


def make_dtensor(full: torch.Tensor, mesh_shape: tuple[int, ...], placements: list) -> DTensor:
    """``full`` distributed (locally sliced, no communication) over the cached mesh."""
    mesh = context().mesh(mesh_shape)
    return distribute_tensor(full.clone(), mesh, placements, src_data_rank=None)


def make_partial(full: torch.Tensor, reduce_op: str) -> tuple[DTensor, torch.Tensor]:
    """A 1-D-mesh Partial DTensor and the value its reduction must give.

    Rank r holds ``full * (r + 1)`` for sum/avg, ``full + r`` for max, ``full - r`` for min.
    """
    ctx = context()
    r, n = ctx.rank, ctx.world_size
    if reduce_op in ("sum", "avg"):
        local = full * (r + 1)
        total = full * (n * (n + 1) // 2)
        expected = total if reduce_op == "sum" else total / n
    elif reduce_op == "max":
        local, expected = full + r, full + (n - 1)
    else:
        local, expected = full - r, full - (n - 1)
    dt = DTensor.from_local(local, ctx.mesh((n,)), [Partial(reduce_op)], run_check=False)
    return dt, expected
