"""Observations: picklable mirrors of what a utility returned or did on one rank.

An observation tree has the shape of the output: ``Container`` nodes (kind and keys),
``TensorObs`` leaves (class, device, dtype, shape, local data on CPU, placements, facts such
as aliasing), ``ValueObs`` for other leaves, and ``RaisedObs`` when the call raised. The
oracle produces the same types, so comparison is a walk over two trees.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import torch

# Expected facts may be left open: the oracle uses ANY where the contract does not decide.
ANY: Any = "<any>"


@dataclass(frozen=True)
class Tolerance:
    """Relative/absolute tolerance for a leaf produced by a floating-point reduction."""

    rtol: float
    atol: float


@dataclass(frozen=True)
class Container:
    kind: str  # "dict", "OrderedDict", "list", "tuple", or "namedtuple:<Name>"
    keys: tuple[Any, ...]  # dict keys in order, or indices for sequences
    children: tuple[Any, ...]


@dataclass(frozen=True)
class TensorObs:
    cls: str  # "Tensor", "DTensor" or "ShardedTensor"
    device_type: str
    dtype: str
    shape: tuple[int, ...]  # global shape for DTensor / ShardedTensor
    data: torch.Tensor | None  # local data on CPU (for ShardedTensor: local shards concatenated flat)
    stride: tuple[int, ...] | Any = ANY  # of the local data
    local_shape: tuple[int, ...] | Any = ANY  # of the local data (ShardedTensor: flat total)
    placements: tuple[str, ...] | None = None
    mesh_shape: tuple[int, ...] | None = None
    aliases: str | Any | None = ANY  # path of the input leaf whose storage it shares, else None
    pinned: bool | Any = ANY
    shared: bool | Any = ANY
    tolerance: Tolerance | None = None  # expected side only: reduction order may vary


@dataclass(frozen=True)
class ValueObs:
    type_name: str
    value: Any  # the value itself (bytes for BytesIO contents)


@dataclass(frozen=True)
class RaisedObs:
    type_name: str
    message: str  # expected side: a substring the observed message must contain


@dataclass(frozen=True)
class Outcome:
    """Everything observed on one rank for one case."""

    result: Any  # an observation tree, or RaisedObs
    mutated: dict[str, Any] = field(default_factory=dict)  # argument name -> tree after the call
    may_desync: bool = False  # the call raised: collectives may be left unfinished on this rank


def container_kind(value: Any) -> str:
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return f"namedtuple:{type(value).__name__}"
    if type(value) in (dict, list, tuple):
        return type(value).__name__
    return type(value).__name__


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_placement(placement: Any) -> str:
    """A stable text form of a torch placement: Shard(0), Replicate(), Partial(sum), ..."""
    name = type(placement).__name__
    if name == "Shard":
        return f"Shard({placement.dim})"
    if name == "_StridedShard":
        return f"_StridedShard({placement.dim}, sf={placement.split_factor})"
    if name == "Replicate":
        return "Replicate()"
    if name == "Partial":
        return f"Partial({placement.reduce_op})"
    return repr(placement)


class Observer:
    """Turns live outputs into observation trees, recording aliasing with known storages."""

    def __init__(self, storages: dict[int, str] | None = None) -> None:
        # data_ptr of an input leaf's storage -> that leaf's path
        self.storages = storages or {}

    def observe(self, value: Any) -> Any:
        from torch.distributed._shard.sharded_tensor import ShardedTensor
        from torch.distributed.tensor import DTensor

        if isinstance(value, ShardedTensor):
            shards = value.local_shards()
            shard_tensors = [s.tensor for s in shards]
            live = bool(shard_tensors) and not any(t.is_meta for t in shard_tensors)
            data = torch.cat([t.detach().cpu().reshape(-1) for t in shard_tensors]) if live else None
            return TensorObs(
                cls="ShardedTensor",
                device_type=shard_tensors[0].device.type if shard_tensors else "cpu",
                dtype=dtype_name(value.dtype),
                shape=tuple(value.size()),
                data=data,
                local_shape=None if data is None else tuple(data.shape),
                aliases=self._alias_of(shard_tensors[0]) if live else None,
                pinned=all(t.is_pinned() for t in shard_tensors) if live else None,
                shared=all(t.is_shared() for t in shard_tensors) if live else None,
            )
        if isinstance(value, DTensor):
            local = value.to_local()
            return TensorObs(
                cls="DTensor",
                device_type=local.device.type,
                dtype=dtype_name(value.dtype),
                shape=tuple(value.shape),
                data=None if local.is_meta else local.detach().cpu().clone(),
                stride=tuple(local.stride()),
                local_shape=tuple(local.shape),
                placements=tuple(describe_placement(p) for p in value.placements),
                mesh_shape=tuple(value.device_mesh.shape),
                aliases=self._alias_of(local),
                pinned=local.is_pinned() if local.device.type == "cpu" else False,
                shared=local.is_shared(),
            )
        if isinstance(value, torch.Tensor):
            return TensorObs(
                cls="Tensor",
                device_type=value.device.type,
                dtype=dtype_name(value.dtype),
                shape=tuple(value.shape),
                data=None if value.is_meta else value.detach().cpu().clone(),
                stride=tuple(value.stride()),
                local_shape=tuple(value.shape),
                aliases=self._alias_of(value),
                pinned=value.is_pinned() if value.device.type == "cpu" else False,
                shared=value.is_shared(),
            )
        if isinstance(value, dict):
            keys = tuple(value.keys())
            return Container(container_kind(value), keys, tuple(self.observe(value[k]) for k in keys))
        if isinstance(value, (list, tuple)):
            return Container(
                container_kind(value),
                tuple(range(len(value))),
                tuple(self.observe(v) for v in value),
            )
        if isinstance(value, io.BytesIO):
            return ValueObs("BytesIO", value.getvalue())
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return ValueObs(type(value).__name__, value)
        return ValueObs(type(value).__name__, repr(value))

    def _alias_of(self, tensor: torch.Tensor) -> str | None:
        if tensor.numel() == 0 or tensor.is_meta:
            return None  # empty tensors have no storage to share
        return self.storages.get(tensor.untyped_storage().data_ptr())


def describe_placement_spec(spec: Any) -> str:
    """The text :func:`describe_placement` gives for the torch placement of a PlacementSpec."""
    from strategies.placements import get_placement_model

    return describe_placement(get_placement_model(spec.kind).to_torch(spec))
