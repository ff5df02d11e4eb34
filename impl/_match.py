"""Pairwise structure comparison of two state-dict trees (used by similarity and copy)."""

from __future__ import annotations

from typing import Any

from ._traverse import (
    DTENSOR,
    SHARDED,
    TENSOR,
    child_path,
    children,
    leaf_kind,
)

_TENSOR_KINDS = (TENSOR, DTENSOR, SHARDED)


def container_category(value: Any) -> str | None:
    """'dict', 'list' or 'tuple' (subclasses count as their base), None for leaves."""
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    if isinstance(value, tuple):
        return "tuple"
    return None


def _describe(value: Any) -> str:
    category = container_category(value)
    if category is not None:
        return category
    kind = leaf_kind(value)
    return kind if kind in _TENSOR_KINDS else f"non-tensor {type(value).__name__}"


def _shard_layout(value: Any) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return sorted(
        (tuple(s.metadata.shard_offsets), tuple(s.metadata.shard_sizes)) for s in value.local_shards()
    )


def _leaf_mismatch(a: Any, b: Any, local: bool) -> str | None:
    kind_a, kind_b = leaf_kind(a), leaf_kind(b)
    tensor_a, tensor_b = kind_a in _TENSOR_KINDS, kind_b in _TENSOR_KINDS
    if not tensor_a and not tensor_b:
        return None
    if kind_a != kind_b:
        return f"{_describe(a)} vs {_describe(b)}"
    if tuple(a.size()) != tuple(b.size()):
        return f"shape {tuple(a.size())} vs {tuple(b.size())}"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if not local:
        return None
    if kind_a == DTENSOR:
        la, lb = tuple(a.to_local().shape), tuple(b.to_local().shape)
        if la != lb:
            return f"local shape {la} vs {lb}"
    elif kind_a == SHARDED:
        sa, sb = _shard_layout(a), _shard_layout(b)
        if sa != sb:
            return f"local shards (offsets, sizes) {sa} vs {sb}"
    return None


def first_mismatch(a: Any, b: Any, *, local: bool, path: str = "state_dict") -> str | None:
    """A message ``<path>: <a> vs <b>`` for the first difference, depth-first in ``a``'s order.

    Compared: container category (dict/list/tuple), dict key sets, sequence lengths, tensor vs
    non-tensor, tensor kind, global shape, dtype; with ``local`` also DTensor local shapes and
    ShardedTensor local shard layouts. Values of non-tensor leaves are not compared.
    """
    cat_a, cat_b = container_category(a), container_category(b)
    if cat_a != cat_b:
        return f"{path}: {_describe(a)} vs {_describe(b)}"
    if cat_a is None:
        detail = _leaf_mismatch(a, b, local)
        return None if detail is None else f"{path}: {detail}"
    if cat_a == "dict":
        missing = [k for k in a if k not in b]
        if missing:
            return f"{path}: key {missing[0]!r} missing from the other state dict"
        extra = [k for k in b if k not in a]
        if extra:
            return f"{path}: extra key {extra[0]!r} in the other state dict"
        for key, value in a.items():
            found = first_mismatch(value, b[key], local=local, path=child_path(path, key))
            if found is not None:
                return found
        return None
    if len(a) != len(b):
        return f"{path}: length {len(a)} vs {len(b)}"
    for (index, value), other in zip(children(a), b, strict=True):
        found = first_mismatch(value, other, local=local, path=child_path(path, index))
        if found is not None:
            return found
    return None
