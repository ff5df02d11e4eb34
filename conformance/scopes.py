"""Named case predicates that narrow a known divergence to the inputs it is about.

A divergence entry with ``scope = "name"`` excuses a difference only in cases for which
``SCOPES[name](case)`` is true. Keep each predicate small and say in its docstring exactly
which inputs it selects.
"""

from __future__ import annotations

from collections.abc import Callable

from conformance.case import Case
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    SeqSpec,
    ShardedTensorSpec,
    Spec,
    TensorSpec,
    iter_leaves,
)


def _leaves(case: Case) -> list:
    leaves = [leaf for _, leaf in iter_leaves(case.state_dict)]
    if case.other is not None:
        leaves += [leaf for _, leaf in iter_leaves(case.other)]
    return leaves


def sharded_tensor_not_dim0_in_rank_order(case: Case) -> bool:
    """Some ShardedTensor is chunked along a dim other than 0, or its chunks are not placed
    on ranks 0, 1, ... in order, or it is empty (torch assumes dim-0 chunks in rank order)."""
    return any(
        isinstance(leaf, ShardedTensorSpec)
        and (leaf.dim != 0 or list(leaf.rank_order) != sorted(leaf.rank_order) or leaf.tensor.numel == 0)
        for leaf in _leaves(case)
    )


def partial_dtensor(case: Case) -> bool:
    """Some DTensor leaf has a Partial placement."""
    return any(
        isinstance(leaf, DTensorSpec) and any(p.kind == "partial" for p in leaf.placements)
        for leaf in _leaves(case)
    )


def strided_shard_dtensor(case: Case) -> bool:
    """Some DTensor leaf has a _StridedShard placement."""
    return any(
        isinstance(leaf, DTensorSpec) and any(p.kind == "strided_shard" for p in leaf.placements)
        for leaf in _leaves(case)
    )


def zero_dim_tensor(case: Case) -> bool:
    """Some tensor leaf (plain, DTensor or ShardedTensor) is 0-d."""
    return any(
        (isinstance(leaf, TensorSpec) and leaf.ndim == 0)
        or (isinstance(leaf, (DTensorSpec, ShardedTensorSpec)) and leaf.tensor.ndim == 0)
        for leaf in _leaves(case)
    )


def cpu_offload_with_missing_local_key(case: Case) -> bool:
    """broadcast_state_dict(cpu_offload=True) where a full tensor's key is absent locally."""
    if not case.kwarg("cpu_offload") or not isinstance(case.other, DictSpec):
        return False
    local_keys = {k for k, _ in case.other.items}
    return any(isinstance(v, TensorSpec) and k not in local_keys for k, v in case.state_dict.items)


def tuple_vs_list(case: Case) -> bool:
    """The two state dicts hold a list where the other holds a tuple (same items)."""

    def categories(spec: Spec, path: tuple = ()) -> dict:
        out = {}
        if isinstance(spec, SeqSpec):
            out[path] = "list" if spec.kind == "list" else "tuple"
            for i, c in enumerate(spec.items):
                out |= categories(c, (*path, i))
        elif isinstance(spec, DictSpec):
            for k, c in spec.items:
                out |= categories(c, (*path, k))
        return out

    if case.other is None:
        return False
    mine, theirs = categories(case.state_dict), categories(case.other)
    return any(p in theirs and theirs[p] != c for p, c in mine.items())


SCOPES: dict[str, Callable[[Case], bool]] = {
    f.__name__: f
    for f in (
        sharded_tensor_not_dim0_in_rank_order,
        partial_dtensor,
        strided_shard_dtensor,
        zero_dim_tensor,
        cpu_offload_with_missing_local_key,
        tuple_vs_list,
    )
}
