"""What every oracle module shares: the rank's view of an argument, result trees under CONTRACT
rule 2, the type check, tolerances of reductions."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, cast

import torch

from conformance.case import Case
from conformance.observation import (
    ANY,
    OUTPUT,
    Container,
    RaisedObs,
    TensorObs,
    Tolerance,
    ValueObs,
)
from conformance.oracle.inputs import (
    RankInputs,
)
from conformance.vocabulary import (
    first_unsupported,
)
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    Key,
    Leaf,
    Path,
    Spec,
    TensorSpec,
    ValueSpec,
    format_path,
    torch_dtype,
)

NONE = ValueObs("NoneType", None)

# Floating reductions may sum in another order than the oracle; exact everywhere else.
_REDUCTION_TOLERANCE = {
    torch.float16: Tolerance(1e-2, 1e-2),
    torch.bfloat16: Tolerance(2e-2, 2e-2),
    torch.float32: Tolerance(1e-5, 1e-5),
    torch.float64: Tolerance(1e-12, 1e-12),
    torch.complex64: Tolerance(1e-5, 1e-5),
    torch.complex128: Tolerance(1e-12, 1e-12),
}


def reduction_tolerance(leaf: DTensorSpec) -> Tolerance | None:
    if not any(p.kind == "partial" for p in leaf.placements):
        return None
    return _REDUCTION_TOLERANCE.get(torch_dtype(leaf.tensor.dtype))


def type_check_error(spec: Spec, case: Case) -> RaisedObs | None:
    """Every rank raises ValueError naming the first unsupported leaf when type_check is on."""
    path = first_unsupported(spec)
    if path is None or not case.kwarg("type_check", True):
        return None
    return RaisedObs("ValueError", format_path(path, ""))


# The case strategies (conformance.case_strategies) fix the shape of each utility's arguments;
# these helpers state those invariants to the type checker (``cast`` only, no runtime change).

#: The items of a full state dict of a loading utility (``full_state_dicts``: plain tensors and
#: values) or of a ``local_for`` / ``distribute_tensors_cases`` local state dict (flat leaves).
FullItems = tuple[tuple[Key, TensorSpec | ValueSpec], ...]
LocalItems = tuple[tuple[Key, Leaf], ...]


def device_type_of(case: Case) -> str:
    """The device type a rank of ``case`` holds its tensors on: ``cuda`` (its own GPU) in an
    NCCL world, ``cpu`` in a gloo world."""
    return "cuda" if case.backend == "nccl" else "cpu"


def has_accelerator(case: Case) -> bool:
    """Whether the ranks of ``case`` have an accelerator (pinning is possible): an NCCL case's
    GPU, or one in the machine of a gloo case (the ranks' machine: the driver's, as spawned)."""
    return device_type_of(case) != "cpu" or machine_has_accelerator()


@functools.cache
def machine_has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(accelerator.is_available() if accelerator is not None else torch.cuda.is_available())


def rank_inputs(case: Case, spec: Spec, rank: int, root: str, seed_offset: int = 0) -> RankInputs:
    """One rank's view of an argument of ``case``, on the rank's device."""
    return RankInputs(spec, case.seed + seed_offset, rank, case.world_size, root, device_type_of(case))


def other_spec(case: Case) -> Spec:
    """``case.other`` of a utility that takes a second state dict (copy, similarity, the
    loading utilities): its case strategy always sets it."""
    return cast(Spec, case.other)


def full_items_of(spec: Spec) -> FullItems:
    """The items of a loading utility's flat full state dict (a DictSpec of tensors/values)."""
    return cast(FullItems, cast(DictSpec, spec).items)


def local_items_of(spec: Spec) -> LocalItems:
    """The items of a loading utility's flat local state dict (a DictSpec of leaves)."""
    return cast(LocalItems, cast(DictSpec, spec).items)


def new_tree(tree: Any) -> Any:
    """A result tree of a utility under CONTRACT rule 2: every container is a new object, and
    each tensor shares storage with exactly the other outputs that alias the same input
    storage (a new buffer with none). Sharing is left open when some leaf's aliasing is."""
    leaves = list(_tensor_leaves(tree, ()))
    decided = all(obs.aliases is not ANY for _, obs in leaves)

    def rebuild(node: Any, path: Path) -> Any:
        if isinstance(node, Container):
            children = tuple(rebuild(c, (*path, k)) for k, c in zip(node.keys, node.children, strict=True))
            # the empty tuple is a singleton in CPython: "new" cannot be told from "the same"
            new = ANY if (node.kind, node.keys) == ("tuple", ()) else None
            return replace(node, same_as=new, children=children)
        if isinstance(node, TensorObs) and decided:
            me = format_path(path, OUTPUT)
            shares = tuple(p for p, o in leaves if p != me and o.aliases == node.aliases)
            return replace(node, shares=() if node.aliases is None else shares)
        return node

    return rebuild(tree, ())


def _tensor_leaves(node: Any, path: Path) -> Any:
    """``(output path, TensorObs)`` of every tensor leaf of an expected tree, in tree order."""
    if isinstance(node, Container):
        for key, child in zip(node.keys, node.children, strict=True):
            yield from _tensor_leaves(child, (*path, key))
    elif isinstance(node, TensorObs):
        yield format_path(path, OUTPUT), node
