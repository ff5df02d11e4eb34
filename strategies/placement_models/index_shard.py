"""Sharding along a tensor dim, expressed as an index permutation so join is generic: the
base of ``Shard`` and ``_StridedShard``."""

from __future__ import annotations

import torch

from strategies.spec import PlacementSpec, chunk_bounds


def _take(tensor: torch.Tensor, dim: int, index: list[int]) -> torch.Tensor:
    return tensor.movedim(dim, 0)[torch.tensor(index, dtype=torch.long)].movedim(0, dim)


def _join_by_index(parts: list[torch.Tensor], dim: int, index: list[list[int]]) -> torch.Tensor:
    """Invert a split whose part i holds the elements ``index[i]`` along ``dim``."""
    order = [i for part in index for i in part]
    inverse = [0] * len(order)
    for position, i in enumerate(order):
        inverse[i] = position
    return _take(torch.cat(parts, dim=dim), dim, inverse)


def shard_indices(size: int, n: int) -> list[list[int]]:
    """Element indices each of ``n`` ``Shard`` pieces holds (``torch.chunk``, empty tail)."""
    return [list(range(start, start + length)) for start, length in chunk_bounds(size, n)]


def strided_shard_indices(size: int, n: int, split_factor: int) -> list[list[int]]:
    """Element indices each of ``n`` ``_StridedShard(split_factor)`` pieces holds: chunk into
    ``split_factor`` pieces, chunk each of those into ``n``, piece i concatenates the i-th
    sub-piece of every piece (torch's ``_StridedShard._split_tensor``)."""
    parts: list[list[int]] = [[] for _ in range(n)]
    for outer_start, outer_len in chunk_bounds(size, split_factor):
        for i, (start, length) in enumerate(chunk_bounds(outer_len, n)):
            parts[i].extend(range(outer_start + start, outer_start + start + length))
    return parts


class _IndexShardModel:
    """Base for placements whose pieces are index sets along ``param('dim')``."""

    kind = ""

    def indices(self, size: int, n: int, spec: PlacementSpec) -> list[list[int]]:
        raise NotImplementedError

    def split(
        self, tensor: torch.Tensor, n: int, spec: PlacementSpec, generator: torch.Generator
    ) -> list[torch.Tensor]:
        dim = spec.param("dim")
        return [_take(tensor, dim, idx) for idx in self.indices(tensor.shape[dim], n, spec)]

    def join(self, parts: list[torch.Tensor], spec: PlacementSpec) -> torch.Tensor:
        dim = spec.param("dim")
        size = sum(p.shape[dim] for p in parts)
        return _join_by_index(parts, dim, self.indices(size, len(parts), spec))
