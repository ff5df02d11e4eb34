"""Named predicates that narrow a known divergence to the differences it is about.

A divergence entry with ``scope = "name"`` excuses a difference only when
``SCOPES[name](case, diff)`` is true. Most scopes are *leaf scopes*: they look at the input
leaf the difference is on (the spec at the difference's path, in the argument trees of the
case), never at the other leaves of the case, so one leaf in scope cannot hide a bug on
another. A raised exception has no leaf (it is about the whole call): a leaf scope then asks
whether some leaf of the case is in scope, and the entry's ``observed`` pattern must pin the
exception down. Case scopes (keyword arguments of the call) say so in their docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conformance.case import Case
from conformance.compare import Difference, LeafInfo
from conformance.oracle.inputs import RankInputs
from conformance.oracle.load import load_check_failures, loaded_piece
from conformance.utilities import UTILITY
from conformance.vocabulary import (
    COMPARED_ROOT,
    COPY_ROOT,
    FULL_ROOT,
    LOCAL_ROOT,
    ROOT,
    category,
    distributed_fulls,
    first_unsupported,
    pair_mismatch,
    pg_ranks,
)
from strategies.placements import has_uneven_strided_shard
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
from strategies.tensors import FLOAT8_DTYPES

Scope = Callable[[Case, Difference], bool]

# Roots of the local state dicts a full state dict is loaded into (the law of broadcast and
# distribute observes them under its own name). In a law's case they name its second tree; in a
# utility's case, its roots after the first do.
_LOADED_ROOTS = (LOCAL_ROOT, "law:broadcast_is_distribute")
_CALL_FIELDS = ("raised", "message", "job")


def _trees(case: Case, root: str) -> list[Spec]:
    """The case's spec trees, the one ``root`` names first."""
    first, second = case.state_dict, case.other
    utility = UTILITY.get(case.utility)
    if root in (utility.roots[1:] if utility else _LOADED_ROOTS):
        first, second = second, first
    return [t for t in (first, second) if t is not None]


def spec_at(tree: Spec, path: tuple[Any, ...]) -> Spec | None:
    """The spec at ``path`` in ``tree`` (dict keys, sequence indices), or None."""
    node: Spec | None = tree
    for key in path:
        if isinstance(node, DictSpec):
            node = dict(node.items).get(key)
        elif isinstance(node, SeqSpec) and isinstance(key, int) and 0 <= key < len(node.items):
            node = node.items[key]
        else:
            return None
    return node


def leaf_specs(case: Case, diff: Difference) -> list[Spec]:
    """The input specs at the difference's path: in its own argument tree first, then in the
    case's other tree (a loaded entry's full tensor, a copy's source)."""
    found = (spec_at(tree, diff.path) for tree in _trees(case, diff.root))
    return [s for s in found if s is not None]


def _kind(spec: Spec | None) -> str:
    if spec is None:
        return "absent"
    if isinstance(spec, (DictSpec, SeqSpec)):
        return "container"
    if isinstance(spec, (TensorSpec, DTensorSpec, ShardedTensorSpec)):
        return {TensorSpec: "Tensor", DTensorSpec: "DTensor", ShardedTensorSpec: "ShardedTensor"}[type(spec)]
    return "value"


def leaf_kind(case: Case, diff: Difference) -> str:
    """Tensor, DTensor, ShardedTensor, value, container or absent: the difference's own leaf."""
    specs = leaf_specs(case, diff)
    return _kind(specs[0] if specs else None)


def leaf_info(case: Case, diff: Difference) -> LeafInfo:
    """What the spec says about the difference's own leaf, for reports."""
    specs = leaf_specs(case, diff)
    spec = specs[0] if specs else None
    if isinstance(spec, TensorSpec):
        return LeafInfo("Tensor", spec.dtype, spec.shape)
    if isinstance(spec, DTensorSpec):
        placements = tuple(str(p) for p in spec.placements)
        return LeafInfo("DTensor", spec.tensor.dtype, spec.tensor.shape, placements, spec.mesh_shape)
    if isinstance(spec, ShardedTensorSpec):
        return LeafInfo("ShardedTensor", spec.tensor.dtype, spec.tensor.shape, (f"chunk({spec.dim})",))
    return LeafInfo(_kind(spec))


def _all_leaves(case: Case) -> list[Spec]:
    return [leaf for tree in _trees(case, "state_dict") for _, leaf in iter_leaves(tree)]


def leaf_scope(test: Callable[[Spec], bool]) -> Scope:
    """A scope true when the difference's own leaf passes ``test`` (for an exception: when
    some leaf of the case does)."""

    def scope(case: Case, diff: Difference) -> bool:
        if diff.field in _CALL_FIELDS and not diff.path:
            return any(test(leaf) for leaf in _all_leaves(case))
        return any(test(spec) for spec in leaf_specs(case, diff))

    scope.__name__ = test.__name__
    scope.__doc__ = test.__doc__
    return scope


# --------------------------------------------------------------------------- leaf scopes


def sharded_tensor_not_dim0_in_rank_order(case: Case, diff: Difference) -> bool:
    """Leaf scope: a ShardedTensor chunked along a dim other than 0, or whose chunks are not
    one per rank on ranks 0, 1, ... in order (the members of a subgroup ``pg``, for
    ``all_gather_sharded_tensor``; several or none on a rank included), or empty (torch
    assumes one dim-0 chunk per group rank, in rank order)."""

    members = (
        list(pg_ranks(case.kwarg("pg"), case.world_size))
        if case.utility == "all_gather_sharded_tensor"
        else None
    )

    def not_torch_layout(spec: Spec) -> bool:
        in_order = list(range(case.world_size)) if members is None else members
        return isinstance(spec, ShardedTensorSpec) and (
            spec.dim != 0 or list(spec.rank_order) != in_order or spec.tensor.numel == 0
        )

    return leaf_scope(not_torch_layout)(case, diff)


def partial_dtensor(spec: Spec) -> bool:
    """A DTensor with a Partial placement."""
    return isinstance(spec, DTensorSpec) and any(p.kind == "partial" for p in spec.placements)


def partial_product_or_bitwise_dtensor(spec: Spec) -> bool:
    """A DTensor with a Partial placement of reduce op product, band, bor or bxor (which
    ``distribute_tensor`` cannot build from a full tensor)."""
    return isinstance(spec, DTensorSpec) and any(
        p.kind == "partial" and p.param("reduce_op") in ("product", "band", "bor", "bxor")
        for p in spec.placements
    )


def strided_shard_dtensor(spec: Spec) -> bool:
    """A DTensor with a _StridedShard placement."""
    return isinstance(spec, DTensorSpec) and any(p.kind == "strided_shard" for p in spec.placements)


def uneven_strided_shard_dtensor(spec: Spec) -> bool:
    """A DTensor with a _StridedShard placement that splits its parent pieces unevenly."""
    return isinstance(spec, DTensorSpec) and has_uneven_strided_shard(
        spec.tensor, spec.mesh_shape, spec.placements
    )


def zero_dim_tensor(spec: Spec) -> bool:
    """A 0-d tensor (plain, DTensor or ShardedTensor)."""
    if isinstance(spec, TensorSpec):
        return spec.ndim == 0
    return isinstance(spec, (DTensorSpec, ShardedTensorSpec)) and spec.tensor.ndim == 0


def non_contiguous_tensor(spec: Spec) -> bool:
    """A non-empty plain tensor in a non-contiguous layout (transposed or strided)."""
    return isinstance(spec, TensorSpec) and spec.layout in ("transposed", "strided") and spec.numel > 0


def dtensor_gathered_without_communication(spec: Spec) -> bool:
    """A DTensor that needs no collective to become its full tensor: every placement is
    Replicate, or every non-Replicate placement lies on a mesh dim of size 1."""
    return isinstance(spec, DTensorSpec) and all(
        p.kind == "replicate" or n == 1 for n, p in zip(spec.mesh_shape, spec.placements, strict=True)
    )


def empty_sharded_tensor(spec: Spec) -> bool:
    """A ShardedTensor with no elements."""
    return isinstance(spec, ShardedTensorSpec) and spec.tensor.numel == 0


#: Dtypes gloo collectives reject with "Invalid scalar type" (strategies.tensors.ALL_DTYPES
#: minus GLOO_DTYPES).
GLOO_UNSUPPORTED_DTYPES = ("int16", "uint16", "uint32", "uint64", *FLOAT8_DTYPES)


def _gloo_cannot_carry(spec: Spec) -> bool:
    if isinstance(spec, TensorSpec):
        return spec.dtype in GLOO_UNSUPPORTED_DTYPES
    return isinstance(spec, (DTensorSpec, ShardedTensorSpec)) and spec.tensor.dtype in GLOO_UNSUPPORTED_DTYPES


def wide_unsigned_zero_dim_tensor(spec: Spec) -> bool:
    """A 0-d plain tensor of dtype uint16, uint32, uint64 or float8 (torch's pickle, which the
    object collectives use, cannot load them back)."""
    return (
        isinstance(spec, TensorSpec)
        and spec.ndim == 0
        and spec.dtype in ("uint16", "uint32", "uint64", *FLOAT8_DTYPES)
    )


def gloo_unsupported_dtype(case: Case, diff: Difference) -> bool:
    """Leaf scope, gloo cases only: a tensor (plain, DTensor or ShardedTensor) of a dtype gloo
    collectives cannot carry: int16, uint16, uint32 or uint64."""
    return case.backend == "gloo" and leaf_scope(_gloo_cannot_carry)(case, diff)


# --------------------------------------------------------------------------- case scopes


def cpu_offload_with_missing_local_key(case: Case, diff: Difference) -> bool:
    """Case scope: broadcast_state_dict(cpu_offload=True) where a full tensor's key is absent
    locally or its local entry is None."""
    if not case.kwarg("cpu_offload") or not isinstance(case.other, DictSpec):
        return False
    if not isinstance(case.state_dict, DictSpec):
        return False
    local = dict(case.other.items)
    return any(
        isinstance(v, TensorSpec) and (k not in local or local[k] == ValueSpec(None))
        for k, v in case.state_dict.items
    )


def pg_without_global_rank0(case: Case, diff: Difference) -> bool:
    """Case scope: the call's ``pg`` is a subgroup that leaves out global rank 0 (``pg="tail"``)."""
    return case.kwarg("pg") == "tail"


def copy_must_raise(case: Case, diff: Difference) -> bool:
    """Case scope: copy_state_dict must raise before writing anything: the source holds an
    unsupported leaf and ``type_check`` is on (rule 4), or the two trees do not pair under the
    pair rule (step 2, local shapes included) on some rank."""
    if case.other is None:
        return False
    if case.kwarg("type_check", True) and first_unsupported(case.state_dict) is not None:
        return True
    return any(
        pair_mismatch(case.state_dict, case.other, rank, case.world_size, local=True) is not None
        for rank in range(case.world_size)
    )


def pin_memory_requested(case: Case, diff: Difference) -> bool:
    """Case scope: create_cpu_state_dict(pin_memory=True)."""
    return bool(case.kwarg("pin_memory"))


def pin_memory_with_partial_dtensor(case: Case, diff: Difference) -> bool:
    """Case scope: create_cpu_state_dict(pin_memory=True) of a tree holding a DTensor with a
    Partial placement (ranks that fail to pin at different leaves then meet torch's collective
    ``deepcopy`` of that DTensor out of step)."""
    return bool(case.kwarg("pin_memory")) and any(partial_dtensor(leaf) for leaf in _all_leaves(case))


def distributed_zero_dim_or_without_local_shard(case: Case, diff: Difference) -> bool:
    """Leaf scope: a 0-d DTensor, or a ShardedTensor holding no elements on the difference's
    rank."""
    from strategies.spec import chunk_bounds

    def selected(spec: Spec) -> bool:
        if isinstance(spec, DTensorSpec):
            return spec.tensor.ndim == 0
        if isinstance(spec, ShardedTensorSpec):
            bounds = chunk_bounds(spec.tensor.shape[spec.dim], len(spec.rank_order))
            mine = [
                length
                for (_, length), owner in zip(bounds, spec.rank_order, strict=True)
                if owner == diff.rank
            ]
            return not any(mine) or spec.tensor.numel == 0
        return False

    return any(selected(spec) for spec in leaf_specs(case, diff))


def similarity_mismatch_torch_ignores(case: Case, diff: Difference) -> bool:
    """Case scope (check_state_dict_similarity): the first place where the two trees do not
    pair (CONTRACT pair rule) is one torch does not look at: a non-tensor leaf of the first
    state dict against anything, two DTensors or two ShardedTensors of different global shape
    or dtype, a list against a tuple, or a container against a non-tensor leaf."""
    if case.other is None:
        return False
    path = pair_mismatch(case.state_dict, case.other, diff.rank, case.world_size, local=False)
    if path is None:
        return False
    mine, theirs = spec_at(case.state_dict, path), spec_at(case.other, path)
    if _kind(mine) == "value":
        return True  # torch keeps a non-tensor leaf as it is, whatever it is compared with
    kinds = {type(mine), type(theirs)}
    if kinds in ({DTensorSpec}, {ShardedTensorSpec}):
        return True
    if {category(mine), category(theirs)} == {"list", "tuple"}:
        return True
    containers = [x for x in (mine, theirs) if category(x)]
    leaves = [x for x in (mine, theirs) if not category(x)]
    return len(containers) == 1 and _kind(leaves[0]) in ("value", "absent")


def _source_value(case: Case, diff: Difference) -> Any:
    """What the call's other argument holds at the difference's path on its rank: the state
    dict's local value (for a copy destination or a compared dict), or the full tensor (for
    a loaded local state dict); None when there is no tensor there."""
    if diff.root in (COPY_ROOT, COMPARED_ROOT):
        inputs = RankInputs(case.state_dict, case.seed, diff.rank, case.world_size, ROOT)
    elif diff.root == LOCAL_ROOT and case.utility == "distribute_tensors":
        inputs = RankInputs(distributed_fulls(case), case.seed + 1, diff.rank, case.world_size, FULL_ROOT)
    elif diff.root in _LOADED_ROOTS:  # the law's sides load it
        inputs = RankInputs(case.state_dict, case.seed, diff.rank, case.world_size, FULL_ROOT)
    else:
        return None
    leaf = spec_at(inputs.spec, diff.path)
    if not isinstance(leaf, (TensorSpec, DTensorSpec, ShardedTensorSpec)):
        return None
    if diff.root in (COPY_ROOT, COMPARED_ROOT):
        return inputs.local(leaf, diff.path)
    full = inputs.global_value(leaf, diff.path)
    local = leaf_specs(case, diff)[0]
    if not isinstance(local, DTensorSpec):
        return full
    if tuple(local.tensor.shape) != tuple(full.shape):  # no piece of this full tensor fits it
        return None
    return loaded_piece(full, _as_torch_slices(local), diff.rank)


def _as_torch_slices(leaf: DTensorSpec) -> DTensorSpec:
    """``leaf`` with the placements torch's loading slices as if they were others: a Partial
    as Replicate (every rank gets the full value), a _StridedShard as a plain Shard of its
    dim (a contiguous block)."""
    from strategies.spec import PlacementSpec

    def sliced(p: PlacementSpec) -> PlacementSpec:
        if p.kind == "partial":
            return PlacementSpec("replicate")
        if p.kind == "strided_shard":
            return PlacementSpec("shard", (("dim", p.param("dim")),))
        return p

    return DTensorSpec(leaf.tensor, leaf.mesh_shape, tuple(sliced(p) for p in leaf.placements))


def holds_source_values(case: Case, diff: Difference) -> bool:
    """A ``data`` difference whose observed local data is exactly the other argument's value
    at the same path (cast to the observed dtype, broadcast to its shape): a copy destination
    or compared dict written with the state dict's values; for a loaded DTensor, the piece of
    the full tensor torch slices (a Partial dim as if Replicate, a _StridedShard as if Shard)."""
    import torch

    observed = diff.observed_data
    if diff.field != "data" or observed is None:
        return False
    source = _source_value(case, diff)
    if not isinstance(source, torch.Tensor):
        return False
    try:
        wanted = source.to(observed.dtype).expand(observed.shape)
    except RuntimeError:
        return False
    if observed.is_floating_point() or observed.is_complex():
        return bool(
            torch.equal(observed, wanted) or torch.allclose(observed, wanted, equal_nan=True, rtol=0, atol=0)
        )
    return bool(torch.equal(observed, wanted))


def holds_source_values_divided(case: Case, diff: Difference) -> bool:
    """A ``data`` difference on a loaded Partial(sum) DTensor whose observed local data is the
    full tensor's piece (Partial dims as Replicate) divided by the number of ranks along its
    Partial(sum) mesh dims, in floating point (``distribute_tensor``'s partition of a sum)."""
    import math

    import torch

    observed = diff.observed_data
    local = leaf_specs(case, diff)
    if diff.field != "data" or observed is None or not local or not isinstance(local[0], DTensorSpec):
        return False
    leaf = local[0]
    sums = [n for n, p in zip(leaf.mesh_shape, leaf.placements, strict=True) if p.kind == "partial"]
    if not sums or any(p.param("reduce_op") != "sum" for p in leaf.placements if p.kind == "partial"):
        return False
    source = _source_value(case, diff)
    if not isinstance(source, torch.Tensor) or not (observed.is_floating_point() or observed.is_complex()):
        return False
    wanted = (source / math.prod(sums)).to(observed.dtype)
    return wanted.shape == observed.shape and bool(torch.allclose(observed, wanted, equal_nan=True))


def distribute_full_shape_differs(case: Case, diff: Difference) -> bool:
    """Case scope: a ``distribute_tensors`` pair of ``keys`` whose full tensor's shape differs
    from its DTensor's global shape; for a difference on an entry, that pair's entry."""
    if case.utility != "distribute_tensors" or not isinstance(case.other, DictSpec):
        return False
    if not isinstance(case.state_dict, DictSpec):
        return False
    local, fulls = dict(case.state_dict.items), dict(case.other.items)
    differing = {
        k
        for k in case.kwarg("keys", ())
        if isinstance(local.get(k), DTensorSpec) and k in fulls and fulls[k].shape != local[k].tensor.shape
    }
    return bool(differing) and (not diff.path or diff.path[0] in differing)


def _failed_load_checks(case: Case) -> list[str]:
    """The messages of the contract's input checks a load case fails (a law over loads is
    judged as its broadcast side)."""
    utility = "broadcast_state_dict" if case.utility == "law:broadcast_is_distribute" else case.utility
    if (
        utility not in UTILITY
        or not UTILITY[utility].loads
        or not isinstance(case.state_dict, DictSpec)
        or not isinstance(case.other, DictSpec)
    ):
        return []
    return [message for _, message in load_check_failures(case, utility)]


def dtensor_in_full_state_dict(case: Case, diff: Difference) -> bool:
    """Case scope: a load whose ``full_state_dict`` holds a DTensor (CONTRACT broadcast_state_dict
    step 1: every rank must raise before anything is written)."""
    return any("is a DTensor; expected a plain tensor" in m for m in _failed_load_checks(case))


def local_dtensor_shape_differs(case: Case, diff: Difference) -> bool:
    """Case scope: a load with a local DTensor entry whose global shape is not its full
    tensor's (CONTRACT broadcast_state_dict step 2: every rank must raise before writing)."""
    return any("does not match full shape" in m for m in _failed_load_checks(case))


def rank_outside_ranks_only(case: Case, diff: Difference) -> bool:
    """Case scope: the difference is on a rank that ``ranks_only`` leaves out."""
    ranks_only = case.kwarg("ranks_only", ())
    return bool(ranks_only) and diff.rank not in ranks_only


def keys_only_added(case: Case, diff: Difference) -> bool:
    """A ``keys`` difference where the observed keys are the expected ones, in order, plus
    keys of the full state dict that the local one lacked (nothing removed or reordered)."""
    if diff.field != "keys" or not isinstance(diff.observed, list):
        return False
    expected = list(diff.expected)
    kept = [k for k in diff.observed if k in expected]
    full = spec_at(case.state_dict, diff.path)
    full_keys = {k for k, _ in full.items} if isinstance(full, DictSpec) else set()
    added = [k for k in diff.observed if k not in expected]
    return kept == expected and bool(added) and all(k in full_keys for k in added)


SCOPES: dict[str, Scope] = {
    **{
        f.__name__: leaf_scope(f)
        for f in (
            wide_unsigned_zero_dim_tensor,
            partial_product_or_bitwise_dtensor,
            partial_dtensor,
            strided_shard_dtensor,
            uneven_strided_shard_dtensor,
            zero_dim_tensor,
            non_contiguous_tensor,
            dtensor_gathered_without_communication,
            empty_sharded_tensor,
        )
    },
    **{
        f.__name__: f
        for f in (
            sharded_tensor_not_dim0_in_rank_order,
            gloo_unsupported_dtype,
            cpu_offload_with_missing_local_key,
            pg_without_global_rank0,
            copy_must_raise,
            pin_memory_requested,
            pin_memory_with_partial_dtensor,
            rank_outside_ranks_only,
            keys_only_added,
            distributed_zero_dim_or_without_local_shard,
            similarity_mismatch_torch_ignores,
            holds_source_values,
            holds_source_values_divided,
            distribute_full_shape_differs,
            dtensor_in_full_state_dict,
            local_dtensor_shape_differs,
        )
    },
}
