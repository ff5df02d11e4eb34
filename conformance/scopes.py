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
    ValueSpec,
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
    """broadcast_state_dict(cpu_offload=True) where a full tensor's key is absent locally or
    its local entry is None."""
    if not case.kwarg("cpu_offload") or not isinstance(case.other, DictSpec):
        return False
    if not isinstance(case.state_dict, DictSpec):
        return False
    local = dict(case.other.items)
    return any(
        isinstance(v, TensorSpec) and (k not in local or local[k] == ValueSpec(None))
        for k, v in case.state_dict.items
    )


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


def pg_without_global_rank0(case: Case) -> bool:
    """The call's ``pg`` is a subgroup that leaves out global rank 0 (``pg="tail"``)."""
    return case.kwarg("pg") == "tail"


SCOPES[pg_without_global_rank0.__name__] = pg_without_global_rank0


def non_contiguous_full_tensor(case: Case) -> bool:
    """The full state dict (first argument) holds a plain tensor in a non-contiguous layout."""
    return any(
        isinstance(leaf, TensorSpec) and leaf.layout in ("transposed", "strided") and leaf.numel > 0
        for _, leaf in iter_leaves(case.state_dict)
    )


SCOPES[non_contiguous_full_tensor.__name__] = non_contiguous_full_tensor


#: Dtypes gloo collectives reject with "Invalid scalar type" (strategies.tensors.ALL_DTYPES
#: minus GLOO_DTYPES).
GLOO_UNSUPPORTED_DTYPES = ("int16", "uint16", "uint32", "uint64")


def gloo_unsupported_dtype(case: Case) -> bool:
    """A gloo case in which some tensor leaf (plain, DTensor or ShardedTensor, in either state
    dict) has a dtype gloo collectives cannot carry: int16, uint16, uint32 or uint64."""
    return case.backend == "gloo" and any(
        (isinstance(leaf, TensorSpec) and leaf.dtype in GLOO_UNSUPPORTED_DTYPES)
        or (
            isinstance(leaf, (DTensorSpec, ShardedTensorSpec))
            and leaf.tensor.dtype in GLOO_UNSUPPORTED_DTYPES
        )
        for leaf in _leaves(case)
    )


SCOPES[gloo_unsupported_dtype.__name__] = gloo_unsupported_dtype


def copy_must_raise(case: Case) -> bool:
    """A case with a second state dict for which the CONTRACT's copy_state_dict must raise
    before writing anything: the source holds an unsupported leaf and ``type_check`` is on
    (rule 4), or the two trees do not pair under the pair rule (step 2, local shapes
    included) on some rank."""
    from conformance.oracle.expect import first_unsupported, pair_mismatch

    if case.other is None:
        return False
    if case.kwarg("type_check", True) and first_unsupported(case.state_dict) is not None:
        return True
    return any(
        pair_mismatch(case.state_dict, case.other, rank, case.world_size, local=True) is not None
        for rank in range(case.world_size)
    )


SCOPES[copy_must_raise.__name__] = copy_must_raise


def dtensor_gathered_without_communication(case: Case) -> bool:
    """Some DTensor leaf needs no collective to become its full tensor: every placement is
    Replicate, or every non-Replicate placement lies on a mesh dim of size 1."""
    return any(
        isinstance(leaf, DTensorSpec)
        and all(
            p.kind == "replicate" or n == 1 for n, p in zip(leaf.mesh_shape, leaf.placements, strict=True)
        )
        for leaf in _leaves(case)
    )


SCOPES[dtensor_gathered_without_communication.__name__] = dtensor_gathered_without_communication


def pin_memory_requested(case: Case) -> bool:
    """create_cpu_state_dict(pin_memory=True)."""
    return bool(case.kwarg("pin_memory"))


SCOPES[pin_memory_requested.__name__] = pin_memory_requested


def pin_memory_with_partial_dtensor(case: Case) -> bool:
    """create_cpu_state_dict(pin_memory=True) of a tree holding a DTensor with a Partial
    placement (ranks that fail to pin at different leaves then meet torch's collective
    ``deepcopy`` of that DTensor out of step)."""
    return bool(case.kwarg("pin_memory")) and partial_dtensor(case)


SCOPES[pin_memory_with_partial_dtensor.__name__] = pin_memory_with_partial_dtensor
