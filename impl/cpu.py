"""create_cpu_state_dict: fresh CPU buffers mirroring a state dict, for later copy_state_dict."""

from __future__ import annotations

import copy
import weakref
from typing import Any, cast

import torch
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torch.distributed.tensor import DTensor

from ._traverse import DTENSOR, SHARDED, leaf_kind, map_tree

PIN_MEMORY_UNAVAILABLE = "pin_memory=True needs an accelerator; none is available"


def _new_buffer(like: torch.Tensor, pin_memory: bool, share_memory: bool) -> torch.Tensor:
    """A new contiguous CPU tensor of ``like``'s shape and dtype, contents unspecified."""
    out = torch.empty(tuple(like.shape), dtype=like.dtype, device="cpu")
    if out.numel() == 0:
        # Nothing to pin; sharing an empty storage is harmless.
        return out.share_memory_() if share_memory else out
    if share_memory:
        out = out.share_memory_()
        if pin_memory:
            import torch.cuda._pin_memory_utils as pin_utils

            pin_utils.pin_memory(out.data_ptr(), out.numel() * out.element_size())
            weakref.finalize(out, pin_utils.unpin_memory, out.data_ptr())
        return out
    if pin_memory:
        out = out.pin_memory()
    return out


def _cpu_dtensor(value: DTensor, pin_memory: bool, share_memory: bool) -> DTensor:
    local = _new_buffer(value.to_local(), pin_memory, share_memory)
    # Built from the spec directly: from_local would move the buffer to the mesh's device.
    return DTensor(local, value._spec, requires_grad=False)


def _cpu_sharded(value: ShardedTensor, pin_memory: bool, share_memory: bool) -> ShardedTensor:
    metadata = copy.deepcopy(value.metadata())
    for meta in metadata.shards_metadata:
        cast(Any, meta.placement)._device = torch.device("cpu")
    shards = []
    for shard in value.local_shards():
        shard_meta = copy.deepcopy(shard.metadata)
        cast(Any, shard_meta.placement)._device = torch.device("cpu")
        shards.append(Shard(_new_buffer(shard.tensor, pin_memory, share_memory), shard_meta))
    # Only the pinned flag of the local buffers may differ from the source's properties.
    metadata.tensor_properties.pin_memory = bool(shards) and shards[0].tensor.is_pinned()
    metadata.tensor_properties.requires_grad = False
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        shards, metadata, process_group=value._process_group
    )


@torch.no_grad()
def create_cpu_state_dict(
    state_dict: dict[str, Any], pin_memory: bool = False, share_memory: bool = False
) -> dict[str, Any]:
    """A tree of the same structure whose every tensor leaf (kind, global shape, dtype, mesh,
    placements, shard metadata kept) has a new contiguous CPU buffer with unspecified contents.

    Never aliases input storage; ``pin_memory=True`` without an accelerator raises RuntimeError.
    """
    if pin_memory and not torch.accelerator.is_available():
        raise RuntimeError(PIN_MEMORY_UNAVAILABLE)

    def on_tensor(value: Any, path: str) -> Any:
        kind = leaf_kind(value)
        if kind == DTENSOR:
            return _cpu_dtensor(value, pin_memory, share_memory)
        if kind == SHARDED:
            return _cpu_sharded(value, pin_memory, share_memory)
        return _new_buffer(value, pin_memory, share_memory)

    return map_tree(state_dict, on_tensor)
