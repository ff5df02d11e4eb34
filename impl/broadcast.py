"""Loading a flat full state dict into local (possibly DTensor) entries: by broadcast or locally."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

from ._comm import as_bytes, from_bytes, global_rank_of, group_device, group_or_default
from ._traverse import DTENSOR, SHARDED, TENSOR, leaf_kind


class TensorInfo(NamedTuple):
    """Shape and dtype of a full tensor, as known on ranks that do not hold it."""

    size: torch.Size
    dtype: torch.dtype


def _shard_of(full: torch.Tensor, local: DTensor) -> torch.Tensor:
    """This rank's local tensor of ``full`` under ``local``'s mesh and placements (no collective).

    Shard/_StridedShard/Replicate slice as DTensor does. A Partial mesh dim reduces to ``full``
    exactly: for "sum" and "bxor" the coordinate-0 rank holds ``full`` and the others zeros, for
    "product" the others ones, for every other reduce op every rank holds ``full``.
    """
    mesh = local.device_mesh
    layout = [Replicate() if p.is_partial() else p for p in local.placements]
    shard = distribute_tensor(full.detach(), mesh, layout, src_data_rank=None).to_local()
    coordinate = mesh.get_coordinate()
    for dim, placement in enumerate(local.placements):
        if not placement.is_partial() or coordinate is None or coordinate[dim] == 0:
            continue
        op = getattr(placement, "reduce_op", "sum")
        if op in ("sum", "bxor"):
            shard = torch.zeros_like(shard)
        elif op == "product":
            shard = torch.ones_like(shard)
    return shard


@torch.no_grad()
def _place_dtensor(local: DTensor, full: torch.Tensor) -> DTensor:
    """Write ``full``'s shard into ``local`` in place (same object), or build a new DTensor for a
    meta ``local``; values are converted to ``local``'s dtype."""
    shard = _shard_of(full, local)
    if local.is_meta:
        return DTensor.from_local(
            shard.to(local.dtype).clone(),
            local.device_mesh,
            local.placements,
            run_check=False,
            shape=local.shape,
            stride=local.stride(),
        )
    local.to_local().copy_(shard)
    return local


def _dtensor_mismatch(key: str, local: Any, size: torch.Size) -> str | None:
    if isinstance(local, DTensor) and tuple(local.shape) != tuple(size):
        return (
            f"local_state_dict[{key!r}]: DTensor global shape {tuple(local.shape)} "
            f"does not match full shape {tuple(size)}"
        )
    return None


def distribute_tensors(
    local_state_dict: dict[str, Any],
    keys: list[str],
    device: torch.device,
    pg: dist.ProcessGroup | None = None,
) -> None:
    """For each key whose entry is a ``(local DTensor, full tensor)`` pair (tuple or list), replace the entry by
    the DTensor holding its shard of the full tensor (in place unless meta); others untouched."""
    for key in keys:
        entry = local_state_dict.get(key)
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], DTensor)):
            continue
        local, full = entry
        error = _dtensor_mismatch(key, local, full.shape)
        if error is not None:
            raise ValueError(f"distribute_tensors: {error}")
        local_state_dict[key] = _place_dtensor(local, full)


def _receive(info: Any, full: Any, is_src: bool, pg: dist.ProcessGroup, pg_device) -> torch.Tensor:
    """Broadcast one full tensor from group rank 0; every rank returns a fresh tensor."""
    src = global_rank_of(pg, 0)
    if is_src:
        data = as_bytes(full.detach().to(pg_device)).clone()
    else:
        data = torch.empty(
            torch.Size(info.size).numel() * torch.empty((), dtype=info.dtype).element_size(),
            dtype=torch.uint8,
            device=pg_device,
        )
    if data.numel() > 0:
        dist.broadcast(data, src=src, group=pg)
    return from_bytes(data, info.dtype, torch.Size(info.size))


def _store(local_state_dict: dict[str, Any], key: str, full: torch.Tensor, device, fresh: bool) -> None:
    """Write a full tensor into ``local_state_dict[key]`` if that entry is not None; a plain
    entry becomes a tensor on ``device`` that shares no storage with a non-``fresh`` ``full``."""
    local = local_state_dict.get(key)
    if local is None:
        return
    if isinstance(local, DTensor):
        local_state_dict[key] = _place_dtensor(local, full)
    else:
        moved = full.to(device)
        local_state_dict[key] = moved.clone() if moved is full and not fresh else moved


def broadcast_tensors(
    full_state_dict: dict[str, Any],
    local_state_dict: dict[str, Any],
    keys: list[str],
    device: torch.device,
    pg: dist.ProcessGroup | None = None,
) -> None:
    """Collective: broadcast ``full_state_dict[key]`` (tensors on group rank 0, objects with
    ``size``/``dtype`` elsewhere) for each key and store it into every rank's non-None entries."""
    pg = group_or_default(pg)
    is_src = dist.get_rank(pg) == 0
    pg_device = group_device(pg, torch.device(device))
    infos = []
    for key in keys:
        value = full_state_dict[key]
        if is_src or isinstance(value, torch.Tensor):
            infos.append(TensorInfo(value.size(), value.dtype))
        else:
            infos.append(TensorInfo(torch.Size(value.size), value.dtype))
    _agree_on_local_shapes(local_state_dict, list(zip(keys, infos, strict=True)), pg, "broadcast_tensors")
    for key, info in zip(keys, infos, strict=True):
        full = _receive(info, full_state_dict[key], is_src, pg, pg_device)
        _store(local_state_dict, key, full, device, fresh=True)


def _source_metadata(full_state_dict: Any) -> tuple[str, Any]:
    """What group rank 0 announces: ("ok", [(key, is_tensor, info-or-value)]) or ("error", msg)."""
    if not isinstance(full_state_dict, dict):
        return "error", f"full_state_dict must be a dict, got {type(full_state_dict).__name__}"
    entries = []
    for key, value in full_state_dict.items():
        kind = leaf_kind(value)
        if kind in (DTENSOR, SHARDED):
            return "error", f"full_state_dict[{key!r}] is a {kind}; expected a plain tensor"
        if kind == TENSOR:
            entries.append((key, True, TensorInfo(value.size(), value.dtype)))
        else:
            entries.append((key, False, value))
    return "ok", entries


def _agree_on_local_shapes(
    local_state_dict: dict[str, Any],
    tensors: list[tuple[str, TensorInfo]],
    pg: dist.ProcessGroup,
    utility: str,
) -> None:
    """Collective: every rank raises the same ValueError if any rank's local DTensor entry has
    another global shape than its full tensor (lowest such rank named), before any data moves."""
    own_error = None
    for key, info in tensors:
        own_error = own_error or _dtensor_mismatch(key, local_state_dict.get(key), info.size)
    errors: list[str | None] = [None] * dist.get_world_size(pg)
    dist.all_gather_object(errors, own_error, group=pg)
    for rank, error in enumerate(errors):
        if error is not None:
            raise ValueError(f"{utility}: rank {rank}, {error}")


def broadcast_state_dict(
    full_state_dict: dict[str, Any],
    local_state_dict: dict[str, Any],
    device: torch.device,
    pg: dist.ProcessGroup | None = None,
    strict: bool = False,
    cpu_offload: bool = False,
) -> None:
    """Collective: load group rank 0's flat ``full_state_dict`` into every rank's
    ``local_state_dict`` in place (tensors into non-None entries, DTensors by their shard,
    other values into present keys); ``strict`` drops local keys absent from the full dict.
    """
    pg = group_or_default(pg)
    is_src = dist.get_rank(pg) == 0
    announced: list[Any] = [_source_metadata(full_state_dict) if is_src else None]
    dist.broadcast_object_list(announced, src=global_rank_of(pg, 0), group=pg)
    status, entries = announced[0]
    if status == "error":
        raise ValueError(f"broadcast_state_dict: {entries}")

    tensors = [(key, info) for key, is_tensor, info in entries if is_tensor]
    _agree_on_local_shapes(local_state_dict, tensors, pg, "broadcast_state_dict")

    target = torch.device("cpu") if cpu_offload else torch.device(device)
    pg_device = group_device(pg, torch.device(device))
    for key, is_tensor, info in entries:
        if not is_tensor:
            if key in local_state_dict:
                local_state_dict[key] = full_state_dict[key] if is_src else info
            continue
        full = _receive(info, full_state_dict.get(key) if is_src else None, is_src, pg, pg_device)
        _store(local_state_dict, key, full, target, fresh=True)
        written = local_state_dict.get(key)
        if cpu_offload and isinstance(written, DTensor):
            local_state_dict[key] = written.cpu()

    if strict:
        announced_keys = {key for key, _, _ in entries}
        for key in [k for k in local_state_dict if k not in announced_keys]:
            del local_state_dict[key]


def distribute_state_dict(
    full_state_dict: dict[str, Any],
    local_state_dict: dict[str, Any],
    device: torch.device,
    pg: dist.ProcessGroup | None = None,
) -> None:
    """Every rank holds ``full_state_dict``: same effect as ``broadcast_state_dict`` with
    ``strict=False, cpu_offload=False``, without communication."""
    status, entries = _source_metadata(full_state_dict)
    if status == "error":
        raise ValueError(f"distribute_state_dict: {entries}")
    for key, is_tensor, info in entries:
        if is_tensor:
            error = _dtensor_mismatch(key, local_state_dict.get(key), info.size)
            if error is not None:
                raise ValueError(f"distribute_state_dict: {error}")
    for key, is_tensor, value in entries:
        if not is_tensor:
            if key in local_state_dict:
                local_state_dict[key] = value
            continue
        _store(local_state_dict, key, full_state_dict[key].detach(), device, fresh=False)
