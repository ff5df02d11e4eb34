"""Shared vocabulary of the rank side and the oracle: argument roots, the ranks of a ``pg``
choice, the full tensors a case pairs with its DTensors, flatten paths, and the pair rule.

Pure functions of specs (no process group, no target): :mod:`conformance.calls` builds live
arguments with them, the oracle and the scopes judge with them, so neither imports the other.
"""

from __future__ import annotations

from typing import Any, cast

from conformance.materialise import sharded_chunks
from strategies.placements import coordinate_of, local_shapes
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    Key,
    Path,
    SeqSpec,
    ShardedTensorSpec,
    Spec,
    TensorLeaf,
    TensorSpec,
    UnsupportedSpec,
    iter_leaves,
)

#: Roots of the arguments as they appear in paths and messages.
ROOT = "state_dict"
FULL_ROOT = "full_state_dict"
LOCAL_ROOT = "local_state_dict"
COPY_ROOT = "copy_state_dict"
COMPARED_ROOT = "compared_state_dict"
FLAT_ROOT = "flat_state_dict"


def pg_ranks(choice: str | None, world_size: int) -> tuple[int, ...]:
    """Global ranks of a ``pg`` kwarg: "tail" is every rank but 0, so its group rank 0 is
    global rank 1; anything else is every rank."""
    return tuple(range(1, world_size)) if choice == "tail" else tuple(range(world_size))


def distributed_fulls(case: Any) -> Any:
    """The full tensors a ``distribute_tensors`` case pairs with its DTensors: ``case.other``
    where the case gives them (a shape may differ), else each DTensor's global tensor."""
    return case.other if case.other is not None else global_specs(case.state_dict)


def global_specs(spec: Any) -> Any:
    """The flat dict of plain tensor specs standing for each DTensor leaf's global tensor."""
    return DictSpec(
        tuple((k, v.tensor if isinstance(v, DTensorSpec) else v) for k, v in spec.items), spec.kind
    )


TENSOR_SPECS = (TensorSpec, DTensorSpec, ShardedTensorSpec)


def first_unsupported(spec: Spec) -> Path | None:
    return next((path for path, leaf in iter_leaves(spec) if isinstance(leaf, UnsupportedSpec)), None)


def category(spec: Spec) -> str | None:
    """Container category: dict, list or tuple (namedtuples included); None for a leaf."""
    if isinstance(spec, DictSpec):
        return "dict"
    if isinstance(spec, SeqSpec):
        return "list" if spec.kind == "list" else "tuple"
    return None


def _tensor_facts(leaf: TensorLeaf, rank: int, world_size: int, local: bool) -> tuple:
    """Kind, global shape and dtype of a tensor leaf, plus what it holds on ``rank`` if ``local``."""
    tensor = leaf if isinstance(leaf, TensorSpec) else leaf.tensor
    facts: tuple = (type(leaf).__name__, tensor.shape, tensor.dtype)
    if local and isinstance(leaf, DTensorSpec):
        facts += (
            local_shapes(tensor, leaf.mesh_shape, leaf.placements)[coordinate_of(rank, leaf.mesh_shape)],
        )
    if local and isinstance(leaf, ShardedTensorSpec):
        facts += (
            frozenset(
                (leaf.dim, start, n) for owner, start, n in sharded_chunks(leaf, world_size) if owner == rank
            ),
        )
    return facts


def pair_mismatch(
    source: Spec, dest: Spec, rank: int, world_size: int, local: bool, path: Path = ()
) -> Path | None:
    """The first path (depth-first in ``source``'s order) where the two trees do not pair:
    containers of the same category with the same key set / length, tensor leaves of the same
    kind, global shape and dtype (and, if ``local``, the same local shape or shards on ``rank``),
    any non-tensor leaf with any non-tensor leaf."""
    if category(source) or category(dest):
        if category(source) != category(dest):
            return path
        pairs: list[tuple[Key, Spec, Spec]]
        # same category: both DictSpec or both SeqSpec
        if isinstance(source, DictSpec):
            dest_items = dict(cast(DictSpec, dest).items)
            if set(dest_items) != {k for k, _ in source.items}:
                return path
            pairs = [(k, c, dest_items[k]) for k, c in source.items]
        else:
            source_seq, dest_seq = cast(SeqSpec, source), cast(SeqSpec, dest)
            if len(source_seq.items) != len(dest_seq.items):
                return path
            pairs = [(i, c, d) for i, (c, d) in enumerate(zip(source_seq.items, dest_seq.items, strict=True))]
        for key, child, other in pairs:
            found = pair_mismatch(child, other, rank, world_size, local, (*path, key))
            if found is not None:
                return found
        return None
    if isinstance(source, TENSOR_SPECS) != isinstance(dest, TENSOR_SPECS):
        return path
    if (
        isinstance(source, TENSOR_SPECS)
        and isinstance(dest, TENSOR_SPECS)
        and _tensor_facts(source, rank, world_size, local) != _tensor_facts(dest, rank, world_size, local)
    ):
        return path
    return None


def flatten_paths(spec: Spec) -> list[tuple[str, Path]]:
    """(dot-joined key, spec path) of every leaf: mappings and sequences are descended,
    empty containers vanish."""
    return [(".".join(str(k) for k in path), path) for path, _ in iter_leaves(spec)]


def object_path(spec: Spec, path: Path) -> tuple:
    """The object path flattening records: dict keys as str, sequence indices as int."""
    out: list[Key] = []
    node = spec
    for key in path:
        if isinstance(node, DictSpec):
            out.append(str(key))
            node = dict(node.items)[key]
        else:
            # ``path`` leads through containers: below a non-dict the key is a sequence index
            out.append(key)
            node = cast(SeqSpec, node).items[cast(int, key)]
    return tuple(out)
