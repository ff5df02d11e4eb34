"""The container walk shared by every utility: leaf classification, paths, rebuilding containers."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor

# Leaves every utility passes through unchanged (same object).
SCALAR_TYPES = (int, float, str, bytes, io.BytesIO)

# Leaf kinds, as returned by ``leaf_kind``.
SHARDED = "ShardedTensor"
DTENSOR = "DTensor"
TENSOR = "Tensor"
SCALAR = "scalar"
UNSUPPORTED = "unsupported"


def is_container(value: Any) -> bool:
    """True for dicts, lists and tuples, including their subclasses."""
    return isinstance(value, (dict, list, tuple))


def leaf_kind(value: Any) -> str:
    """Classify a non-container value."""
    if isinstance(value, ShardedTensor):
        return SHARDED
    if isinstance(value, DTensor):
        return DTENSOR
    if isinstance(value, torch.Tensor):
        return TENSOR
    if value is None or isinstance(value, SCALAR_TYPES):
        return SCALAR
    return UNSUPPORTED


def is_tensor_leaf(value: Any) -> bool:
    return leaf_kind(value) in (SHARDED, DTENSOR, TENSOR)


def child_path(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def children(container: Any) -> Iterator[tuple[Any, Any]]:
    """(key or index, value) pairs of a container, in its own order."""
    if isinstance(container, dict):
        yield from container.items()
    else:
        yield from enumerate(container)


def rebuild(template: Any, items: list[tuple[Any, Any]]) -> Any:
    """A new container of ``template``'s kind holding ``items`` (key/index, value) in order.

    dict subclasses keep their type and attributes (OrderedDict, defaultdict's factory) where
    a shallow copy is possible; namedtuples stay that namedtuple; otherwise the base kind.
    """
    if isinstance(template, dict):
        if type(template) is dict:
            return dict(items)
        try:
            new = copy.copy(template)
            new.clear()
        except Exception:
            new = {}
        for key, value in items:
            new[key] = value
        return new
    values = [value for _, value in items]
    if isinstance(template, tuple):
        if type(template) is tuple:
            return tuple(values)
        make = getattr(type(template), "_make", None)
        try:
            return make(values) if make is not None else type(template)(values)
        except Exception:
            return tuple(values)
    if type(template) is list:
        return values
    try:
        seq: Any = copy.copy(template)
        seq.clear()
        seq.extend(values)
        return seq
    except Exception:
        return values


def unsupported_message(value: Any, path: str) -> str:
    return (
        f"unsupported value of type {type(value).__name__} at {path}; pass type_check=False to deep-copy it"
    )


def check_types(tree: Any, path: str = "state_dict") -> None:
    """Raise ValueError naming the first unsupported leaf (depth-first, container order)."""
    if is_container(tree):
        for key, value in children(tree):
            check_types(value, child_path(path, key))
    elif leaf_kind(tree) == UNSUPPORTED:
        raise ValueError(unsupported_message(tree, path))


def map_tree(
    tree: Any,
    on_tensor: Callable[[Any, str], Any],
    path: str = "state_dict",
) -> Any:
    """Rebuild ``tree`` with every tensor leaf replaced by ``on_tensor(leaf, path)``.

    Supported non-tensor leaves are kept (same object); unsupported ones are deep-copied
    (callers that type-check do so before calling this).
    """
    if is_container(tree):
        items = [(k, map_tree(v, on_tensor, child_path(path, k))) for k, v in children(tree)]
        return rebuild(tree, items)
    kind = leaf_kind(tree)
    if kind == SCALAR:
        return tree
    if kind == UNSUPPORTED:
        return copy.deepcopy(tree)
    return on_tensor(tree, path)


def drop_for_rank(tree: Any) -> Any:
    """What a rank outside ``ranks_only`` receives: an empty dict of the input's kind or None."""
    return rebuild(tree, []) if isinstance(tree, dict) else None


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two plain tensors may alias (same untyped storage)."""
    try:
        sa, sb = a.untyped_storage(), b.untyped_storage()
    except Exception:
        return False
    return sa.nbytes() > 0 and sa.data_ptr() == sb.data_ptr() and a.device == b.device
