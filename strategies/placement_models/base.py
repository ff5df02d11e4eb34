"""The :class:`PlacementModel` protocol every placement kind implements (see
:mod:`strategies.placements` for how to write one)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from hypothesis import strategies as st

from strategies.spec import PlacementSpec, TensorSpec


@runtime_checkable
class PlacementModel(Protocol):
    """Single-process model of one placement kind (see module docstring)."""

    kind: str

    def placements(
        self,
        tensor: TensorSpec,
        mesh_shape: tuple[int, ...],
        mesh_dim: int,
        previous: tuple[PlacementSpec, ...],
    ) -> st.SearchStrategy[PlacementSpec] | None: ...

    def split(
        self, tensor: torch.Tensor, n: int, spec: PlacementSpec, generator: torch.Generator
    ) -> list[torch.Tensor]: ...

    def join(self, parts: list[torch.Tensor], spec: PlacementSpec) -> torch.Tensor: ...

    def to_torch(self, spec: PlacementSpec) -> Any: ...
