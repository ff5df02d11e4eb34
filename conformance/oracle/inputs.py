"""What each rank holds before a call, computed from the spec alone (no process group).

The values come from the same spec semantics the ranks use (:mod:`strategies.values`, the
placement models, chunk bounds), never from a target. These functions also build the
expected observation of an argument that a utility must leave untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from conformance.materialise import dtensor_locals, global_tensor, sharded_chunks, unsupported_value
from conformance.observation import Container, TensorObs, ValueObs, describe_placement_spec
from strategies.placements import coordinate_of
from strategies.spec import (
    BytesIOSpec,
    DictSpec,
    DTensorSpec,
    Leaf,
    Path,
    SeqSpec,
    ShardedTensorSpec,
    Spec,
    TensorLeaf,
    TensorSpec,
    UnsupportedSpec,
    ValueSpec,
    format_path,
    iter_leaves,
)
from strategies.values import (
    make_global_tensor,
    share_group_footprints,
    storage_key,
    storage_spec,
    view_in_layout,
)

# The caches below hand out shared tensors: the oracle only reads them, and every observation
# it builds holds a clone (``tensor_obs``, ``global_value`` callers). What a RankInputs returns
# (``local``, ``plain``, ``global_value``) is read only for the same reason.


@lru_cache(maxsize=512)
def _global_tensor(leaf: DTensorSpec | ShardedTensorSpec, seed: int, path: Path) -> torch.Tensor:
    """:func:`global_tensor`, computed once for all the ranks the oracle judges (read only)."""
    return global_tensor(leaf, seed, path)


@lru_cache(maxsize=1024)
def _storage(flat: TensorSpec, seed: int, key: tuple, rank: int | None) -> torch.Tensor:
    """The storage buffer of a plain leaf (:func:`storage_spec`), computed once for every rank
    that holds the same values (``rank`` None unless the leaf is per rank; read only)."""
    return make_global_tensor(flat, seed, key, rank)


@lru_cache(maxsize=512)
def _dtensor_locals(leaf: DTensorSpec, seed: int, path: Path) -> dict[tuple[int, ...], torch.Tensor]:
    """:func:`dtensor_locals`, computed once for all ranks (read only, as above)."""
    return dtensor_locals(leaf, seed, path)


def spec_container_kind(spec: DictSpec | SeqSpec) -> str:
    """The observed container kind a spec container materialises as."""
    if isinstance(spec, DictSpec):
        return "OrderedDict" if spec.kind == "ordered_dict" else "dict"
    if spec.kind == "namedtuple":
        return f"namedtuple:SpecTuple{len(spec.items)}"
    return spec.kind


def map_spec(
    spec: Spec,
    leaf_fn: Callable[[Path, Leaf], Any],
    path: Path = (),
    kind_fn: Callable | None = None,
) -> Any:
    """An observation tree of ``spec``'s shape, each leaf replaced by ``leaf_fn(path, leaf)``."""
    kind_fn = kind_fn or spec_container_kind
    if isinstance(spec, DictSpec):
        keys = tuple(k for k, _ in spec.items)
        return Container(
            kind_fn(spec),
            keys,
            tuple(map_spec(c, leaf_fn, (*path, k), kind_fn) for k, c in spec.items),
        )
    if isinstance(spec, SeqSpec):
        children = tuple(map_spec(c, leaf_fn, (*path, i), kind_fn) for i, c in enumerate(spec.items))
        return Container(kind_fn(spec), tuple(range(len(spec.items))), children)
    return leaf_fn(path, spec)


def value_obs(
    leaf: ValueSpec | BytesIOSpec | UnsupportedSpec, path: Path, root: str | None = None
) -> ValueObs:
    """The observation of a non-tensor leaf (unsupported objects observed by their repr). A
    BytesIO is never read or seeked (position 0). With ``root``, the leaf is in a result that
    passes non-tensor leaves through (CONTRACT rule 3): a BytesIO is the input object at
    ``path`` under ``root``, an unsupported object a deep copy (a new object)."""
    if isinstance(leaf, ValueSpec):
        return ValueObs(type(leaf.value).__name__, leaf.value)
    if isinstance(leaf, BytesIOSpec):
        same = {} if root is None else {"same_as": format_path(path, root)}
        return ValueObs("BytesIO", leaf.data, position=0, **same)
    value = unsupported_value(leaf.kind, path)
    if root is None:
        return ValueObs(type(value).__name__, repr(value))
    # deepcopy returns an immutable atom (a complex number, ...) itself
    copied_is_same = copy.deepcopy(value) is value
    return ValueObs(
        type(value).__name__, repr(value), same_as=format_path(path, root) if copied_is_same else None
    )


class RankInputs:
    """One rank's view of one materialised argument: local tensors and their storage owners."""

    def __init__(
        self, spec: Spec, seed: int, rank: int, world_size: int, root: str, device_type: str = "cpu"
    ) -> None:
        self.spec, self.seed, self.rank, self.world_size, self.root = (
            spec,
            seed,
            rank,
            world_size,
            root,
        )
        self.device_type = device_type  # where the rank materialises its tensors
        leaves = list(iter_leaves(spec))
        self._footprints = share_group_footprints(leaves)
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._locals: dict[Path, torch.Tensor] = {}  # local data of this spec's own leaves
        # first leaf (tree order, non-empty) that owns each storage key -> its path text
        self._owner: dict[tuple, str] = {}
        for path, leaf in leaves:
            if isinstance(leaf, TensorSpec) and leaf.numel:
                self._owner.setdefault(storage_key(leaf, path), format_path(path, root))
        self.leaves = dict(leaves)

    def plain(self, leaf: TensorSpec, path: Path) -> torch.Tensor:
        """The rank's plain tensor: a view in its layout into its storage buffer (the same
        values as :func:`strategies.values.make_plain_tensor`, the buffer shared by ranks)."""
        key = storage_key(leaf, path)
        if key not in self._buffers:
            flat = storage_spec(leaf, self._footprints.get(key))
            self._buffers[key] = _storage(flat, self.seed, key, self.rank if leaf.per_rank else None)
        return view_in_layout(self._buffers[key], leaf.shape, leaf.layout)

    def owner(self, leaf: TensorLeaf, path: Path) -> str | None:
        """Path of the input leaf whose storage this leaf's local data lives in."""
        if isinstance(leaf, TensorSpec):
            return self._owner.get(storage_key(leaf, path)) if leaf.numel else None
        return format_path(path, self.root) if self.local(leaf, path).numel() else None

    def local(self, leaf: TensorLeaf, path: Path) -> torch.Tensor:
        """The rank's local data: the tensor, the DTensor's local tensor, or the ShardedTensor's
        local shards flattened and concatenated (empty when it holds none). Computed once per
        leaf of this argument's spec (read only)."""
        if self.leaves.get(path) is not leaf:  # not this spec's leaf: nothing to reuse
            return self._local(leaf, path)
        if path not in self._locals:
            self._locals[path] = self._local(leaf, path)
        return self._locals[path]

    def _local(self, leaf: TensorLeaf, path: Path) -> torch.Tensor:
        if isinstance(leaf, TensorSpec):
            return self.plain(leaf, path)
        if isinstance(leaf, DTensorSpec):
            # ranks hold a contiguous copy of their part
            parts = _dtensor_locals(leaf, self.seed, path)
            return parts[coordinate_of(self.rank, leaf.mesh_shape)].contiguous()
        if isinstance(leaf, ShardedTensorSpec):
            full = _global_tensor(leaf, self.seed, path)
            shards = [
                full.narrow(leaf.dim, start, length).reshape(-1)
                for owner, start, length in sharded_chunks(leaf, self.world_size)
                if owner == self.rank
            ]
            return torch.cat(shards) if shards else torch.empty(0, dtype=full.dtype)
        raise TypeError(f"not a tensor leaf: {leaf!r}")

    def tensor_obs(self, leaf: TensorLeaf, data: torch.Tensor | None, **facts: Any) -> TensorObs:
        """:func:`tensor_obs` with a ShardedTensor's layout (metadata and local shard shapes)
        as this rank sees it, on this rank's device unless ``facts`` say otherwise."""
        if isinstance(leaf, ShardedTensorSpec):
            facts = {**sharded_layout(leaf, self.rank, self.world_size), **facts}
        return tensor_obs(leaf, data, **{"device_type": self.device_type, **facts})

    def owns_shard(self, leaf: ShardedTensorSpec) -> bool:
        return any(owner == self.rank for owner, _, _ in sharded_chunks(leaf, self.world_size))

    def global_value(self, leaf: TensorLeaf, path: Path) -> torch.Tensor:
        """The full value a tensor leaf stands for (a plain tensor is its own full value)."""
        if isinstance(leaf, TensorSpec):
            return self.plain(leaf, path).contiguous()
        return _global_tensor(leaf, self.seed, path)

    def unchanged(self, path: Path, leaf: Leaf) -> Any:
        """The observation of an input leaf that was left as it was."""
        if not isinstance(leaf, (TensorSpec, DTensorSpec, ShardedTensorSpec)):
            return value_obs(leaf, path)
        return self.tensor_obs(leaf, self.local(leaf, path), aliases=self.owner(leaf, path), keep_stride=True)

    def observe_all(self) -> Any:
        return map_spec(self.spec, self.unchanged)


def sharded_layout(leaf: ShardedTensorSpec, rank: int, world_size: int) -> dict[str, Any]:
    """The ``shards`` (sorted offsets, sizes, rank of the metadata) and ``local_shapes`` (the
    shapes of ``rank``'s shards, by offset) a ShardedTensor of ``leaf``'s layout has."""
    shards = []
    for owner, start, length in sharded_chunks(leaf, world_size):
        offsets = [0] * len(leaf.tensor.shape)
        offsets[leaf.dim] = start
        sizes = list(leaf.tensor.shape)
        sizes[leaf.dim] = length
        shards.append((tuple(offsets), tuple(sizes), owner))
    shards.sort()
    return {"shards": tuple(shards), "local_shapes": tuple(s for _, s, owner in shards if owner == rank)}


def tensor_obs(leaf: TensorLeaf, data: torch.Tensor | None, **facts: Any) -> TensorObs:
    """Expected observation of a tensor leaf of the same kind as ``leaf`` holding ``data``.

    ``facts`` override defaults (``aliases``, ``cls``, ``pinned`` ...); ``keep_stride``
    expects ``data``'s own stride (else any stride is accepted).
    """
    keep_stride = facts.pop("keep_stride", False)
    tensor = leaf.tensor if isinstance(leaf, (DTensorSpec, ShardedTensorSpec)) else leaf
    base: dict[str, Any] = {
        "cls": {DTensorSpec: "DTensor", ShardedTensorSpec: "ShardedTensor"}.get(type(leaf), "Tensor"),
        "device_type": "cpu",
        "dtype": tensor.dtype,
        "shape": tuple(tensor.shape),
        "data": None if data is None else data.clone(),
        "requires_grad": False,  # no input requires grad, and no utility makes an output do so
    }
    if keep_stride and data is not None and not isinstance(leaf, ShardedTensorSpec):
        base["stride"] = tuple(data.stride())
    if isinstance(leaf, DTensorSpec):
        base["placements"] = tuple(describe_placement_spec(p) for p in leaf.placements)
        base["mesh_shape"] = tuple(leaf.mesh_shape)
    if isinstance(leaf, ShardedTensorSpec) and data is not None and data.numel() == 0:
        base["data"] = None
    base.update(facts)
    return TensorObs(**base)
