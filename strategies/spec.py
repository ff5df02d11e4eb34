"""The spec tree: frozen, picklable, JSON-round-trippable descriptions of a state dict.

A spec says *what* a state dict looks like (containers, keys, tensor shapes, dtypes, memory
layouts, placements); the values that go into tensors are a function of
(seed, path, shape, dtype), see :mod:`strategies.values`.

Plain tensor layouts (``TensorSpec.layout``); every layout is a view into a 1-D *storage
buffer* whose length is :func:`layout_footprint`:

- ``"contiguous"``: ``buffer[:n].view(shape)``.
- ``"transposed"`` (ndim >= 2): a contiguous buffer of the shape with the last two sides
  swapped, viewed through ``transpose(-1, -2)``; not contiguous.
- ``"strided"`` (ndim >= 1): every other element along dim 0 of a contiguous buffer twice as
  long along dim 0 (``buffer[:2n].view((2*s0, *rest))[::2]``).
- ``"offset_view"``: ``buffer[1:1+n].view(shape)``, a contiguous view with storage offset 1.

Share groups (``TensorSpec.view_of``): plain tensor leaves carrying the same label are views
of ONE storage buffer. Each member realises its own layout inside that buffer starting at
storage element 0 (``offset_view`` at 1), so members with equal shape and layout are
element-wise identical views (tied weights) and members of different shapes overlap in a
prefix. All members of a group have the same dtype and the same ``per_rank``; the buffer's
length is the largest footprint of any member. Only plain ``TensorSpec`` leaves take part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

LAYOUTS: tuple[str, ...] = ("contiguous", "transposed", "strided", "offset_view")

#: Kinds of ``UnsupportedSpec``: objects torch's utilities reject under ``type_check=True``.
UNSUPPORTED_KINDS: tuple[str, ...] = ("set", "object", "complex_number")

DICT_KINDS: tuple[str, ...] = ("dict", "ordered_dict")
SEQ_KINDS: tuple[str, ...] = ("list", "tuple", "namedtuple")

Key = str | int
Path = tuple[Key, ...]
PlacementParam = int | str


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` called ``name`` (``"float32"`` -> ``torch.float32``)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r}")
    return dtype


@dataclass(frozen=True)
class TensorSpec:
    """A plain tensor: shape, dtype name, memory layout, per-rank values, share group."""

    shape: tuple[int, ...]
    dtype: str
    layout: str = "contiguous"
    per_rank: bool = False
    view_of: str | None = None

    def __post_init__(self) -> None:
        _check(all(isinstance(s, int) and s >= 0 for s in self.shape), f"bad shape {self.shape}")
        torch_dtype(self.dtype)
        _check(self.layout in LAYOUTS, f"unknown layout {self.layout!r}")
        _check(self.layout != "transposed" or len(self.shape) >= 2, "transposed needs ndim >= 2")
        _check(self.layout != "strided" or len(self.shape) >= 1, "strided needs ndim >= 1")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PlacementSpec:
    """One placement on one mesh dim: a registered kind plus its parameters, e.g.
    ``PlacementSpec("shard", (("dim", 0),))``."""

    kind: str
    params: tuple[tuple[str, PlacementParam], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.kind}({args})"


@dataclass(frozen=True)
class DTensorSpec:
    """A DTensor: the GLOBAL tensor (contiguous, no share group), its mesh, one placement
    per mesh dim."""

    tensor: TensorSpec
    mesh_shape: tuple[int, ...]
    placements: tuple[PlacementSpec, ...]

    def __post_init__(self) -> None:
        _check(len(self.placements) == len(self.mesh_shape), "one placement per mesh dim")
        _check(all(n >= 1 for n in self.mesh_shape), f"bad mesh shape {self.mesh_shape}")


@dataclass(frozen=True)
class ShardedTensorSpec:
    """A ShardedTensor chunk-sharded along ``dim``: ``torch.chunk`` semantics over
    ``len(rank_order)`` chunks (missing trailing chunks are empty), chunk i on rank
    ``rank_order[i]``: any rank order, a rank may hold several chunks or none. See
    :func:`chunk_bounds`."""

    tensor: TensorSpec
    dim: int
    rank_order: tuple[int, ...]

    def __post_init__(self) -> None:
        _check(0 <= self.dim < self.tensor.ndim, f"dim {self.dim} out of range")
        _check(bool(self.rank_order) and min(self.rank_order) >= 0, f"bad rank_order {self.rank_order}")


@dataclass(frozen=True)
class ValueSpec:
    """A Python scalar, str, bytes or None stored as-is."""

    value: int | float | bool | str | bytes | None


@dataclass(frozen=True)
class BytesIOSpec:
    """An ``io.BytesIO`` holding ``data``."""

    data: bytes


@dataclass(frozen=True)
class UnsupportedSpec:
    """An object torch's utilities reject under ``type_check=True``; kind in
    :data:`UNSUPPORTED_KINDS`. ``ranks``: the global ranks that hold it (empty: every rank);
    the other ranks hold ``None`` in its place (see :func:`on_rank`)."""

    kind: str
    ranks: tuple[int, ...] = ()


@dataclass(frozen=True)
class DictSpec:
    """A dict (``kind="dict"``) or ``OrderedDict`` with unique str/int keys, in order."""

    items: tuple[tuple[Key, Spec], ...]
    kind: str = "dict"

    def __post_init__(self) -> None:
        _check(self.kind in DICT_KINDS, f"unknown dict kind {self.kind!r}")
        keys = [k for k, _ in self.items]
        _check(len(set(map(_key_id, keys))) == len(keys), f"duplicate keys {keys}")
        _check(all(_key_id(k) for k in keys), f"keys must be str or int: {keys}")


@dataclass(frozen=True)
class SeqSpec:
    """A list, tuple or namedtuple (fields ``f0, f1, ...``, see :func:`namedtuple_type`)."""

    items: tuple[Spec, ...]
    kind: str = "list"

    def __post_init__(self) -> None:
        _check(self.kind in SEQ_KINDS, f"unknown sequence kind {self.kind!r}")


TensorLeaf = TensorSpec | DTensorSpec | ShardedTensorSpec
Leaf = TensorLeaf | ValueSpec | BytesIOSpec | UnsupportedSpec
Spec = Leaf | DictSpec | SeqSpec
TENSOR_LEAVES = (TensorSpec, DTensorSpec, ShardedTensorSpec)


def _key_id(key: Key) -> tuple[str, Key] | None:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        return None
    return (type(key).__name__, key)


def chunk_bounds(size: int, chunks: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each of ``chunks`` pieces of ``size`` under ``torch.chunk``
    semantics, padded with empty pieces at ``size`` so there are always ``chunks``."""
    step = -(-size // chunks) if size else 0
    bounds = []
    for i in range(chunks):
        start = min(i * step, size)
        bounds.append((start, min(step, size - start)))
    return bounds


def layout_footprint(shape: tuple[int, ...], layout: str) -> int:
    """Elements of storage a tensor of ``shape`` in ``layout`` spans (see module doc)."""
    n = math.prod(shape)
    return {"strided": 2 * n, "offset_view": n + 1}.get(layout, n)


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The stride torch gives a new contiguous tensor of ``shape`` (a side of 0 steps as 1)."""
    stride, step = [], 1
    for side in reversed(shape):
        stride.append(step)
        step *= max(side, 1)
    return tuple(reversed(stride))


def namedtuple_type(size: int) -> type:
    """The namedtuple class a ``SeqSpec(kind="namedtuple")`` of ``size`` items uses (made once
    per size)."""
    cls = _NAMEDTUPLES.get(size)
    if cls is None:
        cls = _NAMEDTUPLES[size] = _make_namedtuple(size)
    return cls


def _make_namedtuple(size: int) -> type:
    from collections import namedtuple

    # Called through a plain callable: mypy only understands namedtuple() with a literal name.
    make: Callable[[str, list[str]], type] = namedtuple
    cls = make(f"SpecTuple{size}", [f"f{i}" for i in range(size)])
    # Module-level and named after itself, so instances pickle by reference across ranks.
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return cls


_NAMEDTUPLES: dict[int, type] = {}


def __getattr__(name: str) -> type:
    # Unpickling a SpecTupleN in a process that has not made it yet.
    if name.startswith("SpecTuple") and name[len("SpecTuple") :].isdigit():
        return namedtuple_type(int(name[len("SpecTuple") :]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Walking the tree


def iter_leaves(spec: Spec, path: Path = ()) -> Iterator[tuple[Path, Leaf]]:
    """Every leaf with its path (dict keys and sequence indices), in tree order."""
    if isinstance(spec, DictSpec):
        for key, child in spec.items:
            yield from iter_leaves(child, (*path, key))
    elif isinstance(spec, SeqSpec):
        for index, child in enumerate(spec.items):
            yield from iter_leaves(child, (*path, index))
    else:
        yield path, spec


def replace_leaves(spec: Spec, replacements: Mapping[Path, Spec], path: Path = ()) -> Spec:
    """A copy of ``spec`` with the leaves at the given paths replaced."""
    if isinstance(spec, DictSpec):
        items = tuple((k, replace_leaves(c, replacements, (*path, k))) for k, c in spec.items)
        return DictSpec(items, spec.kind)
    if isinstance(spec, SeqSpec):
        children = tuple(replace_leaves(c, replacements, (*path, i)) for i, c in enumerate(spec.items))
        return SeqSpec(children, spec.kind)
    return replacements.get(path, spec)


def tree_depth(spec: Spec) -> int:
    """Container nesting depth: a leaf is 0, ``{}`` is 1, ``{'a': []}`` is 2."""
    if isinstance(spec, DictSpec):
        return 1 + max((tree_depth(c) for _, c in spec.items), default=0)
    if isinstance(spec, SeqSpec):
        return 1 + max((tree_depth(c) for c in spec.items), default=0)
    return 0


def format_path(path: Path, root: str = "state_dict") -> str:
    """``('optim', 'state', 0)`` -> ``"state_dict['optim']['state'][0]"``."""
    return root + "".join(f"[{key!r}]" for key in path)


# ---------------------------------------------------------------------------------------------
# JSON


def _value_to_json(value: Any) -> dict[str, Any]:
    if value is None:
        return {"kind": "none"}
    if isinstance(value, bool):
        return {"kind": "bool", "value": value}
    if isinstance(value, int):
        return {"kind": "int", "value": value}
    if isinstance(value, float):
        return {"kind": "float", "value": value.hex()}
    if isinstance(value, str):
        return {"kind": "str", "value": value}
    if isinstance(value, bytes):
        return {"kind": "bytes", "value": value.hex()}
    raise TypeError(f"cannot encode value {value!r}")


def _value_from_json(obj: dict[str, Any]) -> Any:
    kind = obj["kind"]
    if kind == "none":
        return None
    if kind == "float":
        return float.fromhex(obj["value"])
    if kind == "bytes":
        return bytes.fromhex(obj["value"])
    return obj["value"]


def _tensor_to_json(spec: TensorSpec) -> dict[str, Any]:
    return {
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        "layout": spec.layout,
        "per_rank": spec.per_rank,
        "view_of": spec.view_of,
    }


def _tensor_from_json(obj: dict[str, Any]) -> TensorSpec:
    return TensorSpec(tuple(obj["shape"]), obj["dtype"], obj["layout"], obj["per_rank"], obj["view_of"])


def spec_to_json(spec: Spec) -> dict[str, Any]:
    """A JSON-able (strict JSON: no NaN literals) encoding; inverse of :func:`spec_from_json`."""
    if isinstance(spec, TensorSpec):
        return {"type": "tensor", **_tensor_to_json(spec)}
    if isinstance(spec, DTensorSpec):
        return {
            "type": "dtensor",
            "tensor": _tensor_to_json(spec.tensor),
            "mesh_shape": list(spec.mesh_shape),
            "placements": [
                {"kind": p.kind, "params": [list(kv) for kv in p.params]} for p in spec.placements
            ],
        }
    if isinstance(spec, ShardedTensorSpec):
        return {
            "type": "sharded_tensor",
            "tensor": _tensor_to_json(spec.tensor),
            "dim": spec.dim,
            "rank_order": list(spec.rank_order),
        }
    if isinstance(spec, ValueSpec):
        return {"type": "value", **_value_to_json(spec.value)}
    if isinstance(spec, BytesIOSpec):
        return {"type": "bytesio", "data": spec.data.hex()}
    if isinstance(spec, UnsupportedSpec):
        return {"type": "unsupported", "kind": spec.kind} | (
            {"ranks": list(spec.ranks)} if spec.ranks else {}
        )
    if isinstance(spec, DictSpec):
        items = [[key, spec_to_json(child)] for key, child in spec.items]
        return {"type": "dict", "kind": spec.kind, "items": items}
    if isinstance(spec, SeqSpec):
        return {"type": "seq", "kind": spec.kind, "items": [spec_to_json(c) for c in spec.items]}
    raise TypeError(f"not a spec: {spec!r}")


def spec_from_json(obj: dict[str, Any]) -> Spec:
    """The spec :func:`spec_to_json` encoded (exact: int vs str keys, bytes, -0.0, NaN)."""
    kind = obj["type"]
    if kind == "tensor":
        return _tensor_from_json(obj)
    if kind == "dtensor":
        placements = tuple(
            PlacementSpec(p["kind"], tuple((k, v) for k, v in p["params"])) for p in obj["placements"]
        )
        return DTensorSpec(_tensor_from_json(obj["tensor"]), tuple(obj["mesh_shape"]), placements)
    if kind == "sharded_tensor":
        return ShardedTensorSpec(_tensor_from_json(obj["tensor"]), obj["dim"], tuple(obj["rank_order"]))
    if kind == "value":
        return ValueSpec(_value_from_json(obj))
    if kind == "bytesio":
        return BytesIOSpec(bytes.fromhex(obj["data"]))
    if kind == "unsupported":
        return UnsupportedSpec(obj["kind"], tuple(obj.get("ranks", ())))
    if kind == "dict":
        return DictSpec(tuple((k, spec_from_json(c)) for k, c in obj["items"]), obj["kind"])
    if kind == "seq":
        return SeqSpec(tuple(spec_from_json(c) for c in obj["items"]), obj["kind"])
    raise ValueError(f"unknown spec type {kind!r}")


def on_rank(spec: Spec, rank: int) -> Spec:
    """What ``rank`` holds of ``spec``: an :class:`UnsupportedSpec` held by other ranks only
    becomes ``ValueSpec(None)``; everything else is the same on every rank."""
    held_elsewhere = {
        path: ValueSpec(None)
        for path, leaf in iter_leaves(spec)
        if isinstance(leaf, UnsupportedSpec) and leaf.ranks and rank not in leaf.ranks
    }
    return replace_leaves(spec, held_elsewhere) if held_elsewhere else spec
