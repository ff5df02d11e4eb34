"""copy_state_dict (validated in-place copy) and check_state_dict_similarity."""

from __future__ import annotations

import copy as _copy
from typing import Any

import torch

from ._match import first_mismatch
from ._traverse import (
    DTENSOR,
    SCALAR,
    SHARDED,
    TENSOR,
    check_types,
    children,
    is_container,
    leaf_kind,
    rebuild,
)


def check_state_dict_similarity(
    state_dict: dict[str, Any],
    compared_state_dict: dict[str, Any],
) -> bool:
    """True iff both trees have the same structure (container category, keys, lengths,
    tensor-vs-non-tensor, tensor kind) and every tensor pair the same global shape and dtype.

    Never raises: anything that cannot be compared gives False.
    """
    try:
        return first_mismatch(state_dict, compared_state_dict, local=False) is None
    except Exception:
        return False


def _write(src: Any, dst: Any, non_blocking: bool) -> None:
    kind = leaf_kind(src)
    if kind == TENSOR:
        dst.copy_(src, non_blocking=non_blocking)
    elif kind == DTENSOR:
        dst.to_local().copy_(src.to_local(), non_blocking=non_blocking)
    elif kind == SHARDED:

        def by_offsets(shard: Any) -> tuple[int, ...]:
            return tuple(shard.metadata.shard_offsets)

        src_shards = sorted(src.local_shards(), key=by_offsets)
        dst_shards = sorted(dst.local_shards(), key=by_offsets)
        for s, d in zip(src_shards, dst_shards, strict=True):
            d.tensor.copy_(s.tensor, non_blocking=non_blocking)


def _copy_tree(src: Any, dst: Any, non_blocking: bool) -> Any:
    if is_container(src):
        if isinstance(src, dict):
            items = [(k, _copy_tree(v, dst[k], non_blocking)) for k, v in src.items()]
        else:
            items = [
                (i, _copy_tree(v, d, non_blocking)) for (i, v), d in zip(children(src), dst, strict=True)
            ]
        return rebuild(src, items)
    kind = leaf_kind(src)
    if kind == SCALAR:
        return src
    if kind in (TENSOR, DTENSOR, SHARDED):
        _write(src, dst, non_blocking)
        return dst
    return _copy.deepcopy(src)


@torch.no_grad()
def copy_state_dict(
    state_dict: dict[str, Any],
    copy_state_dict: dict[str, Any],
    non_blocking: bool = False,
    type_check: bool = True,
) -> dict[str, Any]:
    """Copy every tensor of ``state_dict`` into the matching tensor of ``copy_state_dict`` in place,
    after checking every pair first; returns a tree of the source's kinds holding the
    destination's tensor objects and the source's non-tensor leaves.

    Raises ValueError naming the path of the first unsupported leaf or mismatch, before writing.
    """
    if type_check:
        check_types(state_dict)
    mismatch = first_mismatch(state_dict, copy_state_dict, local=True)
    if mismatch is not None:
        raise ValueError(f"copy_state_dict: destination does not match source at {mismatch}")
    return _copy_tree(state_dict, copy_state_dict, non_blocking)
