"""Process-group helpers: default group, its device, and dtype-agnostic byte transport."""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_or_default(pg: dist.ProcessGroup | None) -> dist.ProcessGroup:
    return pg if pg is not None else dist.distributed_c10d._get_default_group()


def group_device(pg: dist.ProcessGroup, device: torch.device | None = None) -> torch.device:
    """The device collectives of ``pg`` run on: ``device`` when the group supports its type."""
    types = [d.type for d in getattr(pg, "_device_types", [])]
    device = torch.device(device) if device is not None else None
    if device is not None and (not types or device.type in types):
        return torch.device(device)
    if not types or "cpu" in types or not torch.accelerator.is_available():
        return torch.device("cpu")
    return torch.device(types[0], torch.accelerator.current_device_index())


def global_rank_of(pg: dist.ProcessGroup, group_rank: int) -> int:
    return dist.get_global_rank(pg, group_rank)


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D uint8 view of a contiguous copy of ``tensor``: every dtype travels on every backend."""
    # clone in contiguous format: a size-1 side may carry any stride, which view() rejects
    flat = tensor.detach().reshape(-1).clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8)


def from_bytes(data: torch.Tensor, dtype: torch.dtype, shape: torch.Size) -> torch.Tensor:
    """Inverse of ``as_bytes`` for a tensor of ``dtype`` and ``shape``."""
    return data.contiguous().view(dtype).reshape(shape)


def all_gather_flat(local: torch.Tensor, pg: dist.ProcessGroup) -> torch.Tensor:
    """All-gather equal-sized 1-D tensors into one 1-D tensor, rank by rank."""
    size = dist.get_world_size(pg)
    out = torch.empty(local.numel() * size, dtype=local.dtype, device=local.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, local, group=pg)
    return out
