"""Build a rank's live inputs from a spec tree, deterministically.

Every tensor's values come from (seed, path, shape, dtype) via :mod:`strategies.values`;
DTensor local tensors come from the placement models' ``split`` at the rank's mesh
coordinate, ShardedTensor local shards from chunk bounds. The oracle derives the same
global tensors, so expected values never come from the code under test.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from strategies.placements import coordinate_of, split_over_mesh, to_torch_placements
from strategies.spec import (
    BytesIOSpec,
    DictSpec,
    DTensorSpec,
    Path,
    SeqSpec,
    ShardedTensorSpec,
    Spec,
    TensorSpec,
    UnsupportedSpec,
    ValueSpec,
    chunk_bounds,
    contiguous_stride,
    format_path,
    iter_leaves,
    namedtuple_type,
    on_rank,
)
from strategies.values import (
    make_global_tensor,
    make_plain_tensor,
    share_group_footprints,
    stable_seed,
    storage_key,
)


class Opaque:
    """The ``UnsupportedSpec("object")`` leaf: a plain object utilities must not accept."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.tag == self.tag

    def __hash__(self) -> int:
        return hash(self.tag)

    def __repr__(self) -> str:
        return f"Opaque({self.tag!r})"


def unsupported_value(kind: str, path: Path) -> Any:
    """The live object for an ``UnsupportedSpec`` leaf."""
    if kind == "set":
        return {1, 2}
    if kind == "complex_number":
        return complex(1, 2)
    return Opaque(format_path(path))


def global_tensor(leaf: DTensorSpec | ShardedTensorSpec, seed: int, path: Path) -> torch.Tensor:
    """The full tensor a DTensor / ShardedTensor leaf stands for (before Partial splitting)."""
    return make_global_tensor(leaf.tensor, seed, path)


def dtensor_locals(leaf: DTensorSpec, seed: int, path: Path) -> dict[tuple[int, ...], torch.Tensor]:
    """What every mesh coordinate holds locally for a DTensor leaf."""
    generator = torch.Generator().manual_seed(stable_seed(seed, path, "split"))
    return split_over_mesh(global_tensor(leaf, seed, path), leaf.mesh_shape, leaf.placements, generator)


def sharded_chunks(leaf: ShardedTensorSpec, world_size: int) -> list[tuple[int, int, int]]:
    """``(rank, start, length)`` of each non-empty chunk of a ShardedTensor leaf."""
    size = leaf.tensor.shape[leaf.dim]
    bounds = chunk_bounds(size, len(leaf.rank_order))
    chunks = [(leaf.rank_order[i], start, n) for i, (start, n) in enumerate(bounds) if n > 0]
    # A ShardedTensor needs at least one shard: an empty tensor is one empty chunk.
    return chunks or [(leaf.rank_order[0], 0, 0)]


@dataclass
class Materialised:
    """A rank's live state dict plus where each input storage came from (for aliasing)."""

    value: Any
    storages: dict[int, str] = field(default_factory=dict)  # storage data_ptr -> leaf path
    tensors: list[torch.Tensor] = field(default_factory=list)  # every input tensor, kept alive


class Builder:
    """Builds live values on one rank; ``mesh`` and ``group`` come from the world context."""

    def __init__(
        self,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
        mesh: Any,
        root: str,
        sharded_group: Any = None,
    ) -> None:
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        self.mesh = mesh  # callable: shape -> DeviceMesh
        self.root = root
        self.sharded_group = sharded_group  # the process group of ShardedTensors (None: default)
        self.storages: dict[int, str] = {}
        self.keepalive: list[torch.Tensor] = []
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._footprints: dict[tuple, int] = {}

    def build(self, spec: Spec, meta_dtensors: bool = False) -> Materialised:
        spec = on_rank(spec, self.rank)
        self._footprints = share_group_footprints(list(iter_leaves(spec)))
        self.meta_dtensors = meta_dtensors
        value = self._build(spec, ())
        return Materialised(value, self.storages, self.keepalive)

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the rank's device (a CPU tensor is already there: no ``.to`` call)."""
        return tensor.to(self.device) if self.device.type != "cpu" else tensor

    def _remember(self, tensor: torch.Tensor, path: Path) -> None:
        # Inputs stay alive until the outcome is observed: a freed input's address could be
        # reused by an output and pass for aliasing.
        self.keepalive.append(tensor)
        if tensor.numel() and tensor.device.type != "meta":
            self.storages.setdefault(tensor.untyped_storage().data_ptr(), format_path(path, self.root))

    def _build(self, spec: Spec, path: Path) -> Any:
        if isinstance(spec, DictSpec):
            items = [(k, self._build(c, (*path, k))) for k, c in spec.items]
            return OrderedDict(items) if spec.kind == "ordered_dict" else dict(items)
        if isinstance(spec, SeqSpec):
            items = [self._build(c, (*path, i)) for i, c in enumerate(spec.items)]
            if spec.kind == "tuple":
                return tuple(items)
            if spec.kind == "namedtuple":
                return namedtuple_type(len(items))(*items)
            return items
        if isinstance(spec, TensorSpec):
            footprint = self._footprints.get(storage_key(spec, path))
            tensor = make_plain_tensor(spec, self.seed, path, self.rank, self._buffers, footprint)
            tensor = self._on_device(tensor)
            self._remember(tensor, path)
            return tensor
        if isinstance(spec, DTensorSpec):
            return self._dtensor(spec, path)
        if isinstance(spec, ShardedTensorSpec):
            return self._sharded(spec, path)
        if isinstance(spec, ValueSpec):
            return spec.value
        if isinstance(spec, BytesIOSpec):
            return io.BytesIO(spec.data)
        if isinstance(spec, UnsupportedSpec):
            return unsupported_value(spec.kind, path)
        raise TypeError(f"not a spec: {spec!r}")

    def _dtensor(self, spec: DTensorSpec, path: Path) -> Any:
        from torch.distributed.tensor import DTensor

        coord = coordinate_of(self.rank, spec.mesh_shape)
        local = dtensor_locals(spec, self.seed, path)[coord].clone(memory_format=torch.contiguous_format)
        local = self._on_device(local)
        if self.meta_dtensors:
            local = local.to("meta")
        self._remember(local, path)
        full_shape = torch.Size(spec.tensor.shape)
        return DTensor.from_local(
            local,
            self.mesh(spec.mesh_shape),
            to_torch_placements(spec.placements),
            run_check=False,
            shape=full_shape,
            stride=contiguous_stride(tuple(full_shape)),
        )

    def _sharded(self, spec: ShardedTensorSpec, path: Path) -> Any:
        from torch.distributed._shard.metadata import ShardMetadata
        from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
        from torch.distributed._shard.sharded_tensor.metadata import (
            ShardedTensorMetadata,
            TensorProperties,
        )

        full = global_tensor(spec, self.seed, path)
        shape = list(spec.tensor.shape)
        metadata, local_shards = [], []
        for owner, start, length in sharded_chunks(spec, self.world_size):
            offsets = [0] * len(shape)
            offsets[spec.dim] = start
            sizes = list(shape)
            sizes[spec.dim] = length
            meta = ShardMetadata(offsets, sizes, f"rank:{owner}/{self.device}")
            metadata.append(meta)
            if owner == self.rank:
                data = full.narrow(spec.dim, start, length).clone(memory_format=torch.contiguous_format)
                data = self._on_device(data)
                self._remember(data, path)
                local_shards.append(Shard(data, meta))
        global_meta = ShardedTensorMetadata(
            metadata, torch.Size(shape), TensorProperties(dtype=full.dtype, layout=torch.strided)
        )
        return ShardedTensor._init_from_local_shards_and_global_metadata(
            local_shards, global_meta, process_group=self.sharded_group
        )
