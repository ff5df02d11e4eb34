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

from strategies.spec import format_path

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
    same_as: str | Any | None = ANY  # path of the input container it *is*, else None


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
    same_as: str | Any | None = ANY  # path of the input tensor it *is*, else None
    shares: tuple[str, ...] | Any = ANY  # output paths of the other outputs sharing its storage
    requires_grad: bool | Any = ANY
    shards: tuple[tuple, ...] | Any = ANY  # ShardedTensor: sorted (offsets, sizes, rank) of metadata
    local_shapes: tuple[tuple[int, ...], ...] | Any = ANY  # ShardedTensor: each local shard's shape
    tolerance: Tolerance | None = None  # expected side only: reduction order may vary


@dataclass(frozen=True)
class ValueObs:
    type_name: str
    value: Any  # the value itself (bytes for BytesIO contents)
    same_as: str | Any | None = ANY  # BytesIO / unsupported objects: the input object it *is*
    position: int | Any = ANY  # BytesIO: the stream position after the call


@dataclass(frozen=True)
class RaisedObs:
    type_name: str
    message: str  # expected side: a substring the observed message must contain
    # observed side: where the target raised (its own frames only); never compared
    traceback: str = field(default="", compare=False)


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


OUTPUT = "output"  # the root of paths in a call's result (``shares``)
_SCALARS = (type(None), bool, int, float, str, bytes)


def storage_of(value: Any) -> int | None:
    """The storage address of a tensor leaf's local data (a ShardedTensor's first local
    shard), or None when it has none (empty, meta, no local shard, not a tensor)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(value, ShardedTensor):
        shards = value.local_shards()
        value = shards[0].tensor if shards else None
    elif isinstance(value, DTensor):
        value = value.to_local()
    if not isinstance(value, torch.Tensor) or value.numel() == 0 or value.is_meta:
        return None
    return value.untyped_storage().data_ptr()


def walk(value: Any, path: tuple = ()) -> Any:
    """``(path, node)`` of every container and leaf of a tree, depth-first, containers first."""
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from walk(child, (*path, key))
    elif isinstance(value, (list, tuple)):
        for index, child in enumerate(value):
            yield from walk(child, (*path, index))


class Observer:
    """Turns live values into observation trees.

    ``storages`` maps the storage address of every input tensor to its path (``aliases``).
    :meth:`remember_inputs` indexes the input objects before the call, so that
    :meth:`observe_result` can tell which output *is* an input (``same_as``) and which outputs
    share storage with each other (``shares``). Arguments observed after the call
    (:meth:`observe_argument`) carry ``same_as`` and leave sharing open.
    """

    def __init__(self, storages: dict[int, str] | None = None) -> None:
        self.storages = storages or {}
        self.objects: dict[int, str] | None = None  # id() of an input object -> its path
        self._inputs: list[Any] = []  # inputs kept alive: a freed id could be reused by an output
        self._sharing: dict[int, list[str]] | None = None  # storage -> output paths, during a result

    def remember_inputs(self, arguments: dict[str, Any]) -> None:
        """Index every container, tensor and mutable leaf of ``arguments`` (root -> value)."""
        self.objects = {}
        for root, value in arguments.items():
            for path, node in walk(value):
                if not isinstance(node, _SCALARS) and not _empty_tuple(node):
                    self.objects.setdefault(id(node), format_path(path, root))
                    self._inputs.append(node)

    def observe_result(self, value: Any) -> Any:
        """The observation of a call's result, with ``same_as`` and ``shares``."""
        sharing: dict[int, list[str]] = {}
        for path, node in walk(value):
            if (ptr := storage_of(node)) is not None:
                sharing.setdefault(ptr, []).append(format_path(path, OUTPUT))
        self._sharing = sharing
        try:
            return self._observe(value, ())
        finally:
            self._sharing = None

    def observe(self, value: Any) -> Any:
        """The observation of a value: identity facts open."""
        return self._observe(value, None)

    def observe_argument(self, value: Any) -> Any:
        """The observation of an argument after the call: which of its objects *are* input
        objects (``same_as``: an entry written in place, or replaced); sharing left open."""
        return self._observe(value, ())

    def _identity(self, value: Any, path: tuple | None) -> dict[str, Any]:
        if path is None or self.objects is None:
            return {}
        return {"same_as": self.objects.get(id(value))}

    def _shares(self, value: Any, path: tuple | None) -> dict[str, Any]:
        if path is None or self._sharing is None:
            return {}
        ptr = storage_of(value)
        if ptr is None:
            return {"shares": ()}
        me = format_path(path, OUTPUT)
        return {"shares": tuple(p for p in self._sharing.get(ptr, ()) if p != me)}

    def _tensor_facts(self, value: torch.Tensor, local: torch.Tensor) -> dict[str, Any]:
        """What a plain tensor or a DTensor (``value``, holding ``local`` on this rank) shows:
        its global dtype and shape, and its local tensor's device, data, layout and memory."""
        return {
            "device_type": local.device.type,
            "dtype": dtype_name(value.dtype),
            "shape": tuple(value.shape),
            "data": None if local.is_meta else local.detach().cpu().clone(),
            "stride": tuple(local.stride()),
            "local_shape": tuple(local.shape),
            "aliases": self._alias_of(local),
            "pinned": local.is_pinned() if local.device.type == "cpu" else False,
            "shared": local.is_shared(),
            "requires_grad": value.requires_grad,
        }

    def _observe(self, value: Any, path: tuple | None) -> Any:
        from torch.distributed._shard.sharded_tensor import ShardedTensor
        from torch.distributed.tensor import DTensor

        def child(key: Any) -> tuple | None:
            return None if path is None else (*path, key)

        if isinstance(value, torch.Tensor):  # ShardedTensor and DTensor included
            identity = {**self._identity(value, path), **self._shares(value, path)}
        if isinstance(value, ShardedTensor):
            shards = sorted(value.local_shards(), key=lambda s: tuple(s.metadata.shard_offsets))
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
                requires_grad=any(t.requires_grad for t in shard_tensors),
                shards=shard_layout(value),
                local_shapes=tuple(tuple(t.shape) for t in shard_tensors),
                **identity,
            )
        if isinstance(value, DTensor):
            return TensorObs(
                cls="DTensor",
                placements=tuple(describe_placement(p) for p in value.placements),
                mesh_shape=tuple(value.device_mesh.shape),
                **self._tensor_facts(value, value.to_local()),
                **identity,
            )
        if isinstance(value, torch.Tensor):
            return TensorObs(cls="Tensor", **self._tensor_facts(value, value), **identity)
        if isinstance(value, dict):
            keys = tuple(value.keys())
            children = tuple(self._observe(value[k], child(k)) for k in keys)
            return Container(container_kind(value), keys, children, **self._identity(value, path))
        if isinstance(value, (list, tuple)):
            children = tuple(self._observe(v, child(i)) for i, v in enumerate(value))
            return Container(
                container_kind(value), tuple(range(len(value))), children, **self._identity(value, path)
            )
        if isinstance(value, io.BytesIO):
            return ValueObs("BytesIO", value.getvalue(), position=value.tell(), **self._identity(value, path))
        if isinstance(value, _SCALARS):
            return ValueObs(type(value).__name__, value)
        return ValueObs(type(value).__name__, repr(value), **self._identity(value, path))

    def _alias_of(self, tensor: torch.Tensor) -> str | None:
        if tensor.numel() == 0 or tensor.is_meta:
            return None  # empty tensors have no storage to share
        return self.storages.get(tensor.untyped_storage().data_ptr())


def _empty_tuple(value: Any) -> bool:
    """``()`` is a singleton in CPython: every empty tuple "is" every other one."""
    return type(value) is tuple and not value


def shard_layout(value: Any) -> tuple[tuple, ...]:
    """A ShardedTensor's global metadata: sorted ``(offsets, sizes, rank)`` of every shard."""
    return tuple(
        sorted(
            (tuple(m.shard_offsets), tuple(m.shard_sizes), m.placement.rank())
            for m in value.metadata().shards_metadata
        )
    )


def describe_placement_spec(spec: Any) -> str:
    """The text :func:`describe_placement` gives for the torch placement of a PlacementSpec."""
    from strategies.placements import to_torch_placements

    (placement,) = to_torch_placements((spec,))
    return describe_placement(placement)
