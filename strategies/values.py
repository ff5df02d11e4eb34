"""Deterministic tensor values for specs: a function of (seed, path, shape, dtype[, rank]).

Values are distinct per element (up to the dtype's range), small enough that sums of a few
of them are exact in every floating dtype (integers below 128 in magnitude), and include
NaN, -0.0 and +inf for floating and complex dtypes when there are enough elements (float8:
distinct finite values and NaN). Integer dtypes get values spread over their whole range;
bool gets both True and False.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

from strategies.spec import Path, TensorSpec, layout_footprint, torch_dtype

# Dtypes whose CPU kernels lack arithmetic (add, sum, max): values are built in int64 and cast.
_NO_ARITHMETIC = {name for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)}


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``repr`` of the parts, stable across processes and runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _values(numel: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(numel, generator=gen)
    if dtype == torch.bool:
        return (perm % 2).bool()
    if dtype.is_floating_point and dtype.itemsize == 1:
        return _float8_values(numel, dtype, gen)
    if dtype.is_floating_point or dtype.is_complex:
        real_dtype = dtype.to_real()
        offset = int(torch.randint(255, (), generator=gen))
        # Magnitudes below 128 keep bf16/fp16 values and small sums of them exact.
        values = ((perm + offset) % 255 - 127).to(torch.float64)
        specials = [float("nan"), -0.0, float("inf")][: max(0, min(3, numel - 1))]
        for position, special in zip(range(numel - 1, -1, -1), specials, strict=False):
            values[perm == position] = special
        if dtype.is_complex:
            imag = (torch.randperm(numel, generator=gen) % 255 - 127).to(torch.float64)
            return torch.complex(values.to(real_dtype), imag.to(real_dtype)).to(dtype)
        return values.to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    if dtype.is_signed:
        # spread over the range; the extremes are the first two of the permutation order
        span = min(hi, 2**62) // max(numel, 1)
        values = (perm - numel // 2) * span
        if numel >= 2:
            values[perm == 0] = max(lo, -(2**63))
            values[perm == numel - 1] = min(hi, 2**63 - 1)
        return values.to(torch.int64).to(dtype)
    span = min(hi, 2**62) // max(numel, 1)
    return (perm * span).to(torch.int64).to(dtype)


def _float8_values(numel: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Distinct finite non-zero float8 values (every such bit pattern, shuffled, repeating past
    their count), then NaN and -0.0 (where the format has it) at the end as elements allow."""
    patterns = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(dtype)
    as_float = patterns.float()
    plain = patterns[torch.isfinite(as_float) & (as_float != 0)]
    order = torch.randperm(len(plain), generator=gen)
    values = plain[order[torch.arange(numel) % len(plain)]].clone()
    negative_zero = torch.tensor(-0.0).to(dtype)
    specials = [float("nan")] + ([-0.0] if torch.signbit(negative_zero.float()) else [])
    for position, special in enumerate(specials[: max(0, min(len(specials), numel - 1))]):
        values[numel - 1 - position] = special
    return values


def make_global_tensor(spec: TensorSpec, seed: int, path: Path, rank: int | None = None) -> torch.Tensor:
    """The contiguous tensor of ``spec.shape``/``spec.dtype`` for the leaf at ``path``.

    Deterministic in its arguments; ``rank`` is mixed in only when ``spec.per_rank``.
    Layout and share group are ignored here (see :func:`make_plain_tensor`).
    """
    rank_part = rank if spec.per_rank else None
    values = _values(spec.numel, torch_dtype(spec.dtype), stable_seed(seed, path, rank_part))
    return values.reshape(spec.shape)


def storage_key(spec: TensorSpec, path: Path) -> tuple:
    """The key of the storage buffer a plain tensor leaf views: its share group or its path."""
    return ("view_of", spec.view_of) if spec.view_of is not None else ("path", path)


def view_in_layout(buffer: torch.Tensor, shape: tuple[int, ...], layout: str) -> torch.Tensor:
    """The view of the 1-D ``buffer`` that realises ``layout`` for ``shape`` (see spec doc)."""
    n = layout_footprint(shape, "contiguous")
    if layout == "contiguous":
        return buffer[:n].view(shape)
    if layout == "offset_view":
        return buffer[1 : 1 + n].view(shape)
    if layout == "transposed":
        swapped = (*shape[:-2], shape[-1], shape[-2])
        return buffer[:n].view(swapped).transpose(-1, -2)
    if layout == "strided":
        return buffer[: 2 * n].view((2 * shape[0], *shape[1:]))[::2]
    raise ValueError(f"unknown layout {layout!r}")


def make_plain_tensor(
    spec: TensorSpec,
    seed: int,
    path: Path,
    rank: int | None = None,
    storages: dict[tuple, torch.Tensor] | None = None,
    footprint: int | None = None,
) -> torch.Tensor:
    """A plain tensor leaf as a rank holds it: a view in ``spec.layout`` into its storage.

    The storage is a 1-D tensor of values from (seed, storage key, rank if per_rank);
    ``storages`` caches buffers per :func:`storage_key` so members of one share group view
    the same storage. ``footprint`` is the buffer length; pass the group's largest
    :func:`strategies.spec.layout_footprint` (see :func:`share_group_footprints`).
    """
    key = storage_key(spec, path)
    storages = {} if storages is None else storages
    if key not in storages:
        storages[key] = make_global_tensor(storage_spec(spec, footprint), seed, key, rank)
    return view_in_layout(storages[key], spec.shape, spec.layout)


def storage_spec(spec: TensorSpec, footprint: int | None = None) -> TensorSpec:
    """The 1-D spec of the storage buffer a plain tensor leaf views (its values are
    ``make_global_tensor(storage_spec(...), seed, storage_key(...), rank)``); ``footprint`` as
    for :func:`make_plain_tensor`."""
    length = footprint if footprint is not None else layout_footprint(spec.shape, spec.layout)
    return TensorSpec((length,), spec.dtype, per_rank=spec.per_rank)


def share_group_footprints(leaves: Iterable[tuple[Path, object]]) -> dict[tuple, int]:
    """Storage length for each storage key among ``(path, leaf)`` pairs (plain tensors only)."""
    sizes: dict[tuple, int] = {}
    for path, leaf in leaves:
        if isinstance(leaf, TensorSpec):
            key = storage_key(leaf, path)
            sizes[key] = max(sizes.get(key, 0), layout_footprint(leaf.shape, leaf.layout))
    return sizes
