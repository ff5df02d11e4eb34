"""gather_state_dict and offload_state_dict_to_cpu: full tensors, optionally moved to CPU."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate

from ._traverse import DTENSOR, SHARDED, check_types, drop_for_rank, leaf_kind, map_tree
from ._traverse import shares_storage as _shares_storage
from .sharded import all_gather_sharded_tensor

_CPU = torch.device("cpu")

# Integer dtypes some backends (gloo, NCCL) cannot reduce or gather, and a wider dtype that
# holds them exactly; the gathered value is converted back.
_GLOO_WIDER = {torch.int16: torch.int32}
for _name, _wide in (("uint16", torch.int32), ("uint32", torch.int64)):
    if hasattr(torch, _name):
        _GLOO_WIDER[getattr(torch, _name)] = _wide
# No wider integer holds uint64, and no collective carries float8: they travel reinterpreted
# as a same-width integer (bit for bit; a Partial of them, which no backend reduces, is not
# supported).
_SAME_WIDTH = {torch.uint64: torch.int64} if hasattr(torch, "uint64") else {}
for _name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"):
    if hasattr(torch, _name):
        _SAME_WIDTH[getattr(torch, _name)] = torch.uint8


def _mesh_device(mesh) -> torch.device:
    if mesh.device_type == "cpu":
        return _CPU
    return torch.device(mesh.device_type, torch.accelerator.current_device_index())


def _full_dtensor(dtensor: DTensor) -> torch.Tensor:
    """The DTensor's global value on its mesh's device; a new tensor, never the local one."""
    value: Any = dtensor
    mesh = value.device_mesh
    target = _mesh_device(mesh)
    if value.device.type != target.type:
        value = value.to(target)
    original = value.dtype
    wider = _GLOO_WIDER.get(original)
    if wider is not None:
        value = value.to(wider)
    elif original in _SAME_WIDTH:
        value = DTensor.from_local(
            value.to_local().view(_SAME_WIDTH[original]),
            mesh,
            value.placements,
            run_check=False,
            shape=value.shape,
            stride=value.stride(),
        )
    replicated = value.redistribute(mesh, [Replicate()] * mesh.ndim)
    full = replicated.to_local()
    wait = getattr(full, "wait", None)
    if callable(wait):
        full = wait()
    full = full.view(original) if original in _SAME_WIDTH else full.to(original)
    if _shares_storage(full, value.to_local()) or _shares_storage(full, replicated.to_local()):
        full = full.clone()
    return full


def _in_ranks(ranks_only: tuple[int, ...], pg: dist.ProcessGroup | None) -> bool:
    return not ranks_only or dist.get_rank(pg) in ranks_only


def gather_state_dict(
    state_dict: dict[str, Any],
    *,
    pg: dist.ProcessGroup | None = None,
    device: torch.device | None = None,
    cpu_offload: bool = False,
    ranks_only: tuple[int, ...] = (),
    type_check: bool = True,
) -> dict[str, Any]:
    """Collective: a copy of ``state_dict`` with every DTensor/ShardedTensor replaced by its full
    tensor (CPU if ``cpu_offload``); ranks outside a non-empty ``ranks_only`` get ``{}``/None.

    Unsupported leaves raise ValueError on every rank before any collective when ``type_check``.
    """
    if type_check:
        check_types(state_dict)
    keep = _in_ranks(ranks_only, pg)

    def on_tensor(value: Any, path: str) -> Any:
        kind = leaf_kind(value)
        if kind == DTENSOR:
            value = _full_dtensor(value)
        elif kind == SHARDED:
            gathered = all_gather_sharded_tensor(value, pg, device)
            local = value.local_shards()
            if local and gathered.device != local[0].tensor.device:
                gathered = gathered.to(local[0].tensor.device)
            value = gathered
        if cpu_offload and keep:
            value = value.to(_CPU)
        return value

    result = map_tree(state_dict, on_tensor)
    return result if keep else drop_for_rank(state_dict)


def offload_state_dict_to_cpu(
    state_dict: dict[str, Any],
    *,
    ranks_only: tuple[int, ...] = (),
    type_check: bool = True,
) -> dict[str, Any]:
    """A copy of ``state_dict`` with every tensor leaf moved to CPU via ``.to("cpu")`` (kind kept;
    tensors already on CPU are returned as the same object); ranks outside ``ranks_only`` get ``{}``/None.
    """
    if type_check:
        check_types(state_dict)
    if not _in_ranks(ranks_only, None):
        return drop_for_rank(state_dict)
    return map_tree(state_dict, lambda value, path: value.to(_CPU))
