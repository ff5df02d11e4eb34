"""Hypothesis strategies for tensor-like leaves: dtypes, plain tensors, meshes, placements,
DTensors and ShardedTensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from strategies.built import built_once, one_of_built, sampled
from strategies.placements import get_placement_model, registered_placements
from strategies.spec import (
    LAYOUTS,
    DTensorSpec,
    PlacementSpec,
    ShardedTensorSpec,
    TensorSpec,
)

#: The 8-bit floating dtypes this torch has (no arithmetic on CPU; no collective carries them).
#: float8_e8m0fnu (a scale format: powers of two, no zero) is left out: the contract fills
#: uncovered and new elements with zeros, which it cannot hold.
FLOAT8_DTYPES: tuple[str, ...] = tuple(
    name
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
    if hasattr(torch, name)
)

#: Every dtype torch offers on CPU (unsigned 16/32/64-bit and float8 only where this torch has them).
ALL_DTYPES: tuple[str, ...] = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    *(name for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)),
    *FLOAT8_DTYPES,
)

#: Dtypes gloo collectives (broadcast, all_gather, all_reduce) accept: not int16, the wide
#: unsigned ints nor float8 ("Invalid scalar type" in torch 2.13).
GLOO_DTYPES: tuple[str, ...] = tuple(
    d for d in ALL_DTYPES if d not in ("int16", "uint16", "uint32", "uint64", *FLOAT8_DTYPES)
)


#: The dtypes trees draw by default: every dtype, those gloo cannot carry about one draw in
#: ten (an entry repeated in a sampled sequence weighs more), so that most cases still reach
#: the collectives while every dtype's contract is exercised.
TREE_DTYPES: tuple[str, ...] = GLOO_DTYPES * 5 + tuple(d for d in ALL_DTYPES if d not in GLOO_DTYPES)


@built_once
def dtypes(*, include: Sequence[str] = ALL_DTYPES) -> st.SearchStrategy[str]:
    """A dtype name from ``include``."""
    return st.sampled_from(tuple(include))


@built_once
def shapes(
    *, min_dims: int = 0, max_dims: int = 3, min_side: int = 0, max_side: int = 5
) -> st.SearchStrategy[tuple[int, ...]]:
    """A shape: 0-d, empty (a 0 side) and uneven sides all included."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def layouts_for(ndim: int, layouts: Sequence[str] = LAYOUTS) -> tuple[str, ...]:
    """The layouts in ``layouts`` a tensor of ``ndim`` dims can take."""
    need = {"transposed": 2, "strided": 1}
    return tuple(layout for layout in layouts if ndim >= need.get(layout, 0))


@built_once
@st.composite
def tensor_specs(
    draw: st.DrawFn,
    *,
    min_dims: int = 0,
    max_dims: int = 3,
    min_side: int = 0,
    max_side: int = 5,
    dtypes: Sequence[str] = ALL_DTYPES,
    layouts: Sequence[str] = LAYOUTS,
    per_rank: bool | None = None,
) -> TensorSpec:
    """A plain tensor spec. ``per_rank=None`` draws the flag; a layout the shape cannot take
    falls back to ``"contiguous"``. Share groups are assigned by the tree strategies."""
    shape = draw(
        shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side),
        label="shape",
    )
    dtype = draw(sampled(tuple(dtypes)), label="dtype")
    layout = draw(sampled(layouts_for(len(shape), layouts) or ("contiguous",)))
    rank_dependent = draw(st.booleans()) if per_rank is None else per_rank
    return TensorSpec(shape, dtype, layout, rank_dependent)


def mesh_factorisations(world_size: int, *, min_dims: int = 1, max_dims: int = 3):
    """Every ordered factorisation of ``world_size`` into min_dims..max_dims sides
    (size-1 sides included), shortest first."""
    out: list[tuple[int, ...]] = []

    def extend(prefix: tuple[int, ...], rest: int, dims: int) -> None:
        if dims == 0:
            if rest == 1:
                out.append(prefix)
            return
        for side in range(1, rest + 1):
            if rest % side == 0:
                extend((*prefix, side), rest // side, dims - 1)

    for dims in range(min_dims, max_dims + 1):
        extend((), world_size, dims)
    return tuple(out)


@built_once
def mesh_shapes(
    world_size: int, *, min_dims: int = 1, max_dims: int = 3
) -> st.SearchStrategy[tuple[int, ...]]:
    """A mesh shape whose sides multiply to ``world_size``; half of the draws, where it has
    any, are 2-D meshes with both sides > 1 (2x2 at world size 4), where placements on two
    mesh dims interact and most layout bugs live."""
    shapes = mesh_factorisations(world_size, min_dims=min_dims, max_dims=max_dims)
    two_sided = tuple(m for m in shapes if len(m) == 2 and min(m) > 1)
    if not two_sided:
        return st.sampled_from(shapes)
    return st.one_of(st.sampled_from(two_sided), st.sampled_from(shapes))


@st.composite
def placements_for(
    draw: st.DrawFn,
    tensor: TensorSpec,
    mesh_shape: tuple[int, ...],
    *,
    kinds: Sequence[str] | None = None,
) -> tuple[PlacementSpec, ...]:
    """One placement per mesh dim from the registered kinds (or ``kinds``) that apply to
    ``tensor``; uneven and empty shards come from uneven or small tensor sides. A mesh dim
    where no requested kind applies (a 0-d tensor with ``kinds=("shard",)``) gets
    ``replicate``."""
    chosen = tuple(registered_placements() if kinds is None else kinds)
    placements: tuple[PlacementSpec, ...] = ()
    for mesh_dim in range(len(mesh_shape)):
        options = [
            strategy
            for kind in chosen
            if (
                strategy := get_placement_model(kind).placements(
                    tensor, tuple(mesh_shape), mesh_dim, placements
                )
            )
            is not None
        ]
        if not options:
            options = [st.just(PlacementSpec("replicate"))]
        placements += (draw(one_of_built(options), label="placement"),)
    return placements


@built_once
@st.composite
def dtensor_specs(
    draw: st.DrawFn,
    world_size: int,
    *,
    mesh_shape: tuple[int, ...] | None = None,
    max_mesh_dims: int = 3,
    min_dims: int = 0,
    max_dims: int = 3,
    max_side: int = 9,
    dtypes: Sequence[str] = GLOO_DTYPES,
    kinds: Sequence[str] | None = None,
) -> DTensorSpec:
    """A DTensor: contiguous global tensor, a mesh of ``world_size`` (drawn unless given),
    one placement per mesh dim."""
    if mesh_shape is None:
        mesh_shape = draw(mesh_shapes(world_size, max_dims=max_mesh_dims), label="mesh_shape")
    tensor = draw(
        tensor_specs(
            min_dims=min_dims,
            max_dims=max_dims,
            max_side=max_side,
            dtypes=dtypes,
            layouts=("contiguous",),
            per_rank=False,
        ),
        label="global tensor",
    )
    placements = draw(placements_for(tensor, mesh_shape, kinds=kinds), label="placements")
    return DTensorSpec(tensor, tuple(mesh_shape), placements)


@built_once
@st.composite
def sharded_tensor_specs(
    draw: st.DrawFn,
    world_size: int,
    *,
    max_dims: int = 3,
    max_side: int = 9,
    dtypes: Sequence[str] = GLOO_DTYPES,
) -> ShardedTensorSpec:
    """A chunk-sharded ShardedTensor on any dim: one chunk per rank in any rank order, or
    (a third of the draws) 1 to 2 x ``world_size`` chunks on any ranks, so that a rank holds
    several chunks or none; uneven and empty chunks arise from sides not divisible by (or
    smaller than) the number of chunks."""
    tensor = draw(
        tensor_specs(
            min_dims=1,
            max_dims=max_dims,
            max_side=max_side,
            dtypes=dtypes,
            layouts=("contiguous",),
            per_rank=False,
        ),
        label="global tensor",
    )
    dim = draw(st.integers(0, tensor.ndim - 1), label="dim")
    rank_order = draw(rank_orders(world_size), label="rank_order")
    return ShardedTensorSpec(tensor, dim, tuple(rank_order))


@built_once
def rank_orders(world_size: int) -> st.SearchStrategy[list[int]]:
    """The ranks holding a ShardedTensor's chunks, in chunk order: a permutation of every
    rank (two draws in three), or 1 to 2 x ``world_size`` chunks on any ranks."""
    return st.one_of(
        st.permutations(range(world_size)),
        st.permutations(range(world_size)),
        st.lists(st.integers(0, world_size - 1), min_size=1, max_size=2 * world_size),
    )
