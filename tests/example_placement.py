"""An example plug-in placement model, loaded as ``tests.example_placement:EvenShard``.

``even_shard`` is ``Shard(dim)`` restricted to dims whose side the mesh dim divides, the
kind of constraint a placement author encodes in the strategy."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from strategies.placements import parent_shapes
from strategies.spec import PlacementSpec, TensorSpec


class EvenShard:
    kind = "even_shard"

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        parents = parent_shapes(tensor, mesh_shape, previous)
        n = mesh_shape[mesh_dim]
        dims = [d for d in range(tensor.ndim) if all(shape[d] % n == 0 for shape in parents)]
        if not dims:
            return None
        return st.sampled_from(dims).map(lambda d: PlacementSpec(self.kind, (("dim", d),)))

    def split(self, tensor, n, spec, generator):
        dim = spec.param("dim")
        return (
            list(torch.split(tensor, tensor.shape[dim] // n, dim=dim)) if tensor.shape[dim] else [tensor] * n
        )

    def join(self, parts, spec):
        dim = spec.param("dim")
        return torch.cat(parts, dim=dim) if parts[0].shape[dim] else parts[0]

    def to_torch(self, spec):
        from torch.distributed.tensor import Shard

        return Shard(spec.param("dim"))
