"""Whole-mesh semantics: a DTensor's local tensor at every mesh coordinate, and back."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import torch

from strategies.placement_models.index_shard import strided_shard_indices
from strategies.placement_models.registry import get_placement_model, registry_version
from strategies.spec import PlacementSpec, TensorSpec, torch_dtype


def parent_shapes(
    tensor: TensorSpec, mesh_shape: tuple[int, ...], previous: tuple[PlacementSpec, ...]
) -> set[tuple[int, ...]]:
    """The shapes the tensor has, across coordinates, after the placements ``previous`` on
    the first ``len(previous)`` mesh dims (what the next mesh dim splits)."""
    return set(local_shapes(tensor, mesh_shape[: len(previous)], previous).values())


def has_uneven_strided_shard(
    tensor: TensorSpec, mesh_shape: tuple[int, ...], placements: tuple[PlacementSpec, ...]
) -> bool:
    """Whether some ``_StridedShard`` of these placements splits its parent pieces unevenly."""
    for i, p in enumerate(placements):
        if p.kind != "strided_shard":
            continue
        dim, sf, n = p.param("dim"), p.param("split_factor"), mesh_shape[i]
        for shape in parent_shapes(tensor, mesh_shape, placements[:i]):
            if len({len(idx) for idx in strided_shard_indices(shape[dim], n, sf)}) > 1:
                return True
    return False


def local_shapes(
    tensor: TensorSpec, mesh_shape: tuple[int, ...], placements: tuple[PlacementSpec, ...]
) -> Mapping[tuple[int, ...], tuple[int, ...]]:
    """The local shape at every mesh coordinate of ``tensor`` placed by ``placements``: a
    read-only mapping, computed once per (tensor, mesh shape, placements, registry state)."""
    return _local_shapes(tensor, tuple(mesh_shape), tuple(placements), registry_version())


@lru_cache(maxsize=2048)
def _local_shapes(
    tensor: TensorSpec,
    mesh_shape: tuple[int, ...],
    placements: tuple[PlacementSpec, ...],
    version: int,
) -> Mapping[tuple[int, ...], tuple[int, ...]]:
    zeros = torch.zeros(tensor.shape, dtype=torch_dtype(tensor.dtype))
    parts = split_over_mesh(zeros, mesh_shape, placements, torch.Generator().manual_seed(0))
    return MappingProxyType({coord: tuple(t.shape) for coord, t in parts.items()})


def split_over_mesh(
    tensor: torch.Tensor,
    mesh_shape: tuple[int, ...],
    placements: tuple[PlacementSpec, ...],
    generator: torch.Generator,
) -> dict[tuple[int, ...], torch.Tensor]:
    """The local tensor at every mesh coordinate: split mesh dim by mesh dim, left to right.

    Randomness is drawn in a fixed order (coordinates in row-major order), so the result is
    a function of the generator's seed.
    """
    level: dict[tuple[int, ...], torch.Tensor] = {(): tensor}
    for n, spec in zip(mesh_shape, placements, strict=True):
        model = get_placement_model(spec.kind)
        level = {
            (*coord, i): part
            for coord, parent in level.items()
            for i, part in enumerate(model.split(parent, n, spec, generator))
        }
    return level


def join_over_mesh(
    locals_: dict[tuple[int, ...], torch.Tensor],
    mesh_shape: tuple[int, ...],
    placements: tuple[PlacementSpec, ...],
) -> torch.Tensor:
    """Inverse of :func:`split_over_mesh`: join mesh dims right to left."""
    level = dict(locals_)
    for depth in range(len(mesh_shape) - 1, -1, -1):
        model = get_placement_model(placements[depth].kind)
        prefixes = itertools.product(*(range(m) for m in mesh_shape[:depth]))
        level = {
            prefix: model.join([level[(*prefix, i)] for i in range(mesh_shape[depth])], placements[depth])
            for prefix in prefixes
        }
    return level[()]


def coordinate_of(rank: int, mesh_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Mesh coordinate of ``rank`` in a row-major mesh ``arange(world).view(mesh_shape)``."""
    coord = []
    for size in reversed(mesh_shape):
        coord.append(rank % size)
        rank //= size
    assert rank == 0 or math.prod(mesh_shape) == 0, "rank outside the mesh"
    return tuple(reversed(coord))


def to_torch_placements(placements: tuple[PlacementSpec, ...]) -> tuple[Any, ...]:
    """The torch Placement objects for the specs (imports torch.distributed.tensor); torch's
    placements are immutable, so each is made once per (spec, registry state) and shared."""
    return tuple(_to_torch(p, registry_version()) for p in placements)


@lru_cache(maxsize=256)
def _to_torch(placement: PlacementSpec, version: int) -> Any:
    return get_placement_model(placement.kind).to_torch(placement)
