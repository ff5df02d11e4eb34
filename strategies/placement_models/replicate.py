"""``Replicate()``."""

from __future__ import annotations

from hypothesis import strategies as st

from strategies.spec import PlacementSpec, TensorSpec

REPLICATE = st.just(PlacementSpec("replicate"))


class ReplicateModel:
    """``Replicate()``: every index holds the tensor itself (the same object)."""

    kind = "replicate"

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        return REPLICATE

    def split(self, tensor, n, spec, generator):
        return [tensor] * n

    def join(self, parts, spec):
        return parts[0]

    def to_torch(self, spec: PlacementSpec):
        from torch.distributed.tensor import Replicate

        return Replicate()
