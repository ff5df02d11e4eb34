"""The placement registry: each DTensor placement kind as a *model* with single-process
semantics, so the oracle can compute what every rank holds without DTensor machinery.

Writing a placement model (the :class:`PlacementModel` protocol)::

    class ReverseShard:
        kind = "reverse_shard"                      # unique name, used in PlacementSpec.kind

        def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
            # a Hypothesis strategy of PlacementSpec(kind, params) valid for this tensor on
            # mesh dim `mesh_dim` of `mesh_shape`, given the placements `previous` drawn for
            # the mesh dims to its left (parent_shapes() gives the tensor's shapes there);
            # or None when the kind does not apply (e.g. 0-d tensors)

        def split(self, tensor, n, spec, generator) -> list[Tensor]:
            # what index i = 0..n-1 along ONE mesh dim of size n holds, given the tensor at
            # the parent level; generator (torch.Generator) for any randomness, e.g. Partial

        def join(self, parts, spec) -> Tensor:
            # the inverse: join(split(t, n, spec, g), spec) equals t (bitwise, NaN-aware)

        def to_torch(self, spec):
            # the torch Placement object; the only place torch.distributed.tensor is imported

A DTensor's local tensor at mesh coordinate ``(c0, c1, ...)`` is ``split`` applied mesh dim
by mesh dim, left to right (:func:`split_over_mesh`). Register an instance with
:func:`register_placement`, or let users name it as ``"package.module:ReverseShard"`` for
:func:`load_placement`.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
from typing import Any, Protocol, runtime_checkable

import torch
from hypothesis import strategies as st

from strategies.spec import PlacementSpec, TensorSpec, chunk_bounds, torch_dtype


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


# ---------------------------------------------------------------------------------------------
# Sharding along a tensor dim, expressed as an index permutation so join is generic.


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


class ShardModel(_IndexShardModel):
    """``Shard(dim)``: ``torch.chunk`` into n pieces along dim; trailing pieces may be empty."""

    kind = "shard"

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        if tensor.ndim == 0:
            return None
        n = mesh_shape[mesh_dim]
        # the parent shapes matter only after a _StridedShard (most draws have none)
        strided = any(p.kind == "strided_shard" for p in previous)
        parents = parent_shapes(tensor, mesh_shape, previous) if strided else set()
        dims = [d for d in range(tensor.ndim) if self._after_strided_ok(d, n, previous, parents)]
        if not dims:
            return None
        return st.sampled_from(dims).map(lambda d: PlacementSpec("shard", (("dim", d),)))

    @staticmethod
    def _after_strided_ok(dim: int, n: int, previous, parents) -> bool:
        """``Shard(dim)`` after a ``_StridedShard(dim, sf)`` only in the pairing torch builds
        (FSDP over TP): ``sf`` equal to this mesh dim's size and every parent piece divisible
        by it. Other pairings make torch 2.13's redistribute put ranks out of step in a gloo
        collective (SIGABRT), which no utility is to blame for."""
        strided = [p for p in previous if p.kind == "strided_shard" and p.param("dim") == dim]
        return not strided or all(
            p.param("split_factor") == n and all(shape[dim] % n == 0 for shape in parents) for p in strided
        )

    def indices(self, size: int, n: int, spec: PlacementSpec) -> list[list[int]]:
        return shard_indices(size, n)

    def to_torch(self, spec: PlacementSpec):
        from torch.distributed.tensor import Shard

        return Shard(spec.param("dim"))


class StridedShardModel(_IndexShardModel):
    """``_StridedShard(dim, split_factor=sf)``: see :func:`strided_shard_indices`.

    Drawn only as the first sharding of its tensor dim (a second sharding of the same dim
    with an arbitrary split_factor makes torch 2.13's ``full_tensor`` reorder rows), with
    uneven and empty pieces as well as even ones. ``StridedShardModel(allow_uneven=False)``
    (registered with ``replace=True``) draws only the even ones.
    """

    kind = "strided_shard"

    def __init__(self, max_split_factor: int = 4, allow_uneven: bool = True) -> None:
        self.max_split_factor = max_split_factor
        self.allow_uneven = allow_uneven

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        # torch 2.13 only round-trips a _StridedShard that is the first sharding of its dim
        taken = {p.param("dim") for p in previous if p.kind in ("shard", "strided_shard")}
        n = mesh_shape[mesh_dim]
        parents = () if self.allow_uneven else parent_shapes(tensor, mesh_shape, previous)
        options = [
            (d, sf)
            for d in range(tensor.ndim)
            if d not in taken
            for sf in range(1, self.max_split_factor + 1)
            if self.allow_uneven
            or all(len({len(p) for p in strided_shard_indices(shape[d], n, sf)}) == 1 for shape in parents)
        ]
        if not options:
            return None
        return st.sampled_from(options).map(
            lambda o: PlacementSpec("strided_shard", (("dim", o[0]), ("split_factor", o[1])))
        )

    def indices(self, size: int, n: int, spec: PlacementSpec) -> list[list[int]]:
        return strided_shard_indices(size, n, spec.param("split_factor"))

    def to_torch(self, spec: PlacementSpec):
        from torch.distributed.tensor.placement_types import _StridedShard

        return _StridedShard(spec.param("dim"), split_factor=spec.param("split_factor"))


class ReplicateModel:
    """``Replicate()``: every index holds the tensor itself (the same object)."""

    kind = "replicate"

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        return st.just(PlacementSpec("replicate"))

    def split(self, tensor, n, spec, generator):
        return [tensor] * n

    def join(self, parts, spec):
        return parts[0]

    def to_torch(self, spec: PlacementSpec):
        from torch.distributed.tensor import Replicate

        return Replicate()


def partial_reduce_ops(dtype: str) -> tuple[str, ...]:
    """Reduce ops ``Partial`` supports for ``dtype`` on gloo (checked against torch 2.13):
    floats sum/avg/max/min/product; complex sum/avg (gloo reduces nothing else of them); ints
    and bool sum/max/min/product and the bitwise band/bor/bxor (avg fails to cast the float
    result back; bool sum/max/product are logical or, or, and); int16 and uint16/32/64 none
    (gloo has no kernels for them)."""
    dt = torch_dtype(dtype)
    if dt.is_complex:
        return ("sum", "avg")
    if dt.itemsize == 1 and dt.is_floating_point:  # float8: no collective reduces it
        return ()
    if dt.is_floating_point:
        return ("sum", "avg", "max", "min", "product")
    if dtype in ("bool", "uint8", "int8", "int32", "int64"):
        return ("sum", "max", "min", "product", "band", "bor", "bxor")
    return ()


def _small(generator: torch.Generator, shape, low: int, high: int) -> torch.Tensor:
    return torch.randint(low, high + 1, shape, generator=generator, dtype=torch.int64)


class PartialModel:
    """``Partial(reduce_op)``: index i holds a contribution; reducing all n gives the tensor.

    Contributions differ per index wherever an element allows it and keep sums exact:
    - sum: index i > 0 holds small integers d_i (same sign as the element, |sum| <= |v| for
      integers so nothing overflows), index 0 holds v - sum(d_i). Non-finite and zero-signed
      float elements: index 0 holds v, others +0.0 (all -0.0 when v is -0.0).
    - avg: index i holds v + e_i with sum(e_i) = 0 (finite non-zero elements; others hold v).
    - max / min: index 0 holds v, the others v - k / v + k (k >= 1, clamped to the range;
      non-finite floats held by all).
    - product: index i > 0 holds 1 or -1 (signed ints: where negating cannot overflow; uint8:
      255, which wraps as -1), index 0 holds v times their product (exact: only signs change).
    - band / bor: index 0 holds v, the others v with random bits set / cleared.
    - bxor: index i > 0 holds random bits r_i, index 0 holds v xor every r_i.
    - bool: sum/max are logical or (index 0 holds v, others v & random), min, product and
      band are logical and (others v | random), bor is or, bxor is xor.
    """

    kind = "partial"

    def placements(self, tensor: TensorSpec, mesh_shape, mesh_dim, previous):
        ops = partial_reduce_ops(tensor.dtype)
        if not ops:
            return None
        # torch rejects a placement list mixing Partial reduce ops: reuse the first one
        for placement in previous:
            if placement.kind == "partial":
                return st.just(placement)
        return st.sampled_from(ops).map(lambda op: PlacementSpec("partial", (("reduce_op", op),)))

    def split(self, tensor, n, spec, generator):
        op = spec.param("reduce_op")
        if tensor.dtype.is_complex:
            real = self.split(tensor.real.contiguous(), n, spec, generator)
            imag = self.split(tensor.imag.contiguous(), n, spec, generator)
            return [torch.complex(r, i) for r, i in zip(real, imag, strict=True)]
        if op in ("band", "bor", "bxor"):
            return self._split_bitwise(tensor, n, op, generator)
        if tensor.dtype == torch.bool:
            masks = [torch.rand(tensor.shape, generator=generator) < 0.5 for _ in range(n - 1)]
            if op in ("min", "product"):
                return [tensor.clone()] + [tensor | m for m in masks]
            return [tensor.clone()] + [tensor & m for m in masks]
        if op == "product":
            return self._split_product(tensor, n, generator)
        if tensor.dtype.is_floating_point:
            return self._split_float(tensor, n, op, generator)
        return self._split_int(tensor, n, op, generator)

    def _split_product(self, tensor, n, generator):
        # uint8 wraps (well defined): -1 is 255, its own inverse
        if tensor.dtype.is_floating_point or tensor.dtype == torch.uint8:
            negatable = torch.ones(tensor.shape, dtype=torch.bool)
        else:
            negatable = tensor != torch.iinfo(tensor.dtype).min
        signs = [
            torch.where(negatable & (torch.rand(tensor.shape, generator=generator) < 0.5), -1, 1)
            for _ in range(n - 1)
        ]
        flip = functools.reduce(torch.mul, signs, torch.ones(tensor.shape, dtype=torch.int64))
        first = torch.where(flip < 0, -tensor, tensor) if bool(negatable.any()) else tensor.clone()
        return [first] + [s.to(tensor.dtype) for s in signs]

    def _split_bitwise(self, tensor, n, op, generator):
        def bits() -> torch.Tensor:
            if tensor.dtype == torch.bool:
                return torch.rand(tensor.shape, generator=generator) < 0.5
            return torch.randint(0, 256, tensor.shape, generator=generator).to(tensor.dtype)

        others = [bits() for _ in range(n - 1)]
        if op == "band":
            return [tensor.clone()] + [tensor | b for b in others]
        if op == "bor":
            return [tensor.clone()] + [tensor & b for b in others]
        return [functools.reduce(torch.bitwise_xor, others, tensor.clone()), *others]

    def _split_float(self, tensor, n, op, generator):
        v = tensor.double()
        plain = torch.isfinite(v) & (v != 0) if op in ("sum", "avg") else torch.isfinite(v)
        parts = []
        if op in ("sum", "avg"):
            d = [_small(generator, v.shape, -3, 3).double() for _ in range(n - 1)]
            rest = sum(d, torch.zeros_like(v))
            if op == "sum":
                zero = torch.where(torch.signbit(v) & (v == 0), v, torch.zeros_like(v))
                parts = [torch.where(plain, v - rest, v)] + [torch.where(plain, x, zero) for x in d]
            else:
                parts = [torch.where(plain, v - rest, v)] + [torch.where(plain, v + x, v) for x in d]
        else:
            sign = -1.0 if op == "max" else 1.0
            others = [v + sign * _small(generator, v.shape, 1, 3).double() for _ in range(n - 1)]
            parts = [v] + [torch.where(plain, x, v) for x in others]
        return [p.to(tensor.dtype) for p in parts]

    def _split_int(self, tensor, n, op, generator):
        info = torch.iinfo(tensor.dtype)
        v = tensor.long()
        if op == "sum":
            # |d_i| <= trunc(|v| / n) keeps every contribution between 0 and v: no overflow
            bound = torch.div(v, n, rounding_mode="trunc").abs()
            d = [torch.minimum(_small(generator, v.shape, 0, 3), bound) * v.sign() for _ in range(n - 1)]
            parts = [v - sum(d, torch.zeros_like(v)), *d]
        else:
            # move away from v only where that cannot leave the dtype's range
            if op == "max":
                room, sign = v > int(info.min) + 3, -1
            else:
                room, sign = v < int(info.max) - 3, 1
            parts = [v] + [
                torch.where(room, v + sign * _small(generator, v.shape, 1, 3), v) for _ in range(n - 1)
            ]
        return [p.to(tensor.dtype) for p in parts]

    def join(self, parts, spec):
        op = spec.param("reduce_op")
        if parts[0].dtype.is_complex:
            real = self.join([p.real for p in parts], spec)
            return torch.complex(real, self.join([p.imag for p in parts], spec))
        bitwise = {"band": torch.bitwise_and, "bor": torch.bitwise_or, "bxor": torch.bitwise_xor}
        if op in bitwise:
            return functools.reduce(bitwise[op], parts[1:], parts[0].clone())
        stacked = torch.stack(parts)
        dtype = stacked.dtype
        if dtype == torch.bool:
            return stacked.all(0) if op in ("min", "product") else stacked.any(0)
        if op == "product":
            # exact: every part but the first is +-1 (a float product in double, then back)
            if dtype.is_floating_point:
                return functools.reduce(torch.mul, [p.double() for p in parts]).to(dtype)
            return functools.reduce(torch.mul, parts[1:], parts[0].clone())
        if op == "max":
            return stacked.amax(0)
        if op == "min":
            return stacked.amin(0)
        if not dtype.is_floating_point:
            return stacked.sum(0, dtype=dtype)
        # a left fold, as a collective adds buffers: torch.sum would start from +0.0 and
        # turn an all -0.0 element into +0.0
        total = functools.reduce(torch.add, [p.double() for p in parts])
        return (total / len(parts) if op == "avg" else total).to(dtype)

    def to_torch(self, spec: PlacementSpec):
        from torch.distributed.tensor import Partial

        return Partial(spec.param("reduce_op"))


# ---------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, PlacementModel] = {}


def register_placement(model: PlacementModel, *, replace: bool = False) -> PlacementModel:
    """Make ``model`` drawable and usable by kind; an existing kind needs ``replace=True``."""
    if not isinstance(model, PlacementModel) or not model.kind:
        raise TypeError(f"{model!r} does not implement the PlacementModel protocol")
    if model.kind in _REGISTRY and not replace and _REGISTRY[model.kind] is not model:
        raise ValueError(f"placement kind {model.kind!r} is already registered")
    _REGISTRY[model.kind] = model
    return model


def get_placement_model(kind: str) -> PlacementModel:
    """The registered model for ``kind``; ``KeyError`` listing the known kinds otherwise."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown placement kind {kind!r}; registered: {sorted(_REGISTRY)}") from None


def unregister_placement(kind: str) -> None:
    """Forget ``kind`` (for tests that register a plug-in temporarily)."""
    _REGISTRY.pop(kind, None)


def registered_placements() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_REGISTRY)


def load_placement(reference: str) -> PlacementModel:
    """Import ``"package.module:Name"`` (a model class or instance) and register it.

    Loading the same reference twice is harmless: the newer object replaces the older.
    """
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:ModelName', got {reference!r}")
    obj = getattr(importlib.import_module(module_name), attr)
    model = obj() if isinstance(obj, type) else obj
    return register_placement(model, replace=True)


for _model in (ShardModel(), ReplicateModel(), PartialModel(), StridedShardModel()):
    register_placement(_model)
BUILTIN_PLACEMENTS: tuple[str, ...] = registered_placements()


# ---------------------------------------------------------------------------------------------
# Whole-mesh semantics


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
) -> dict[tuple[int, ...], tuple[int, ...]]:
    """The local shape at every mesh coordinate of ``tensor`` placed by ``placements``."""
    zeros = torch.zeros(tensor.shape, dtype=torch_dtype(tensor.dtype))
    parts = split_over_mesh(zeros, mesh_shape, placements, torch.Generator().manual_seed(0))
    return {coord: tuple(t.shape) for coord, t in parts.items()}


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
    """The torch Placement objects for the specs (imports torch.distributed.tensor)."""
    return tuple(get_placement_model(p.kind).to_torch(p) for p in placements)
