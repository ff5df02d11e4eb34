"""``Partial(reduce_op)``: contributions that reduce exactly to the tensor."""

from __future__ import annotations

import functools

import torch
from hypothesis import strategies as st

from strategies.built import built_once
from strategies.spec import PlacementSpec, TensorSpec, torch_dtype


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
                return _just(placement)
        return _partials_of(ops)

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


@built_once
def _partials_of(ops: tuple[str, ...]) -> st.SearchStrategy[PlacementSpec]:
    return st.sampled_from(ops).map(lambda op: PlacementSpec("partial", (("reduce_op", op),)))


_just = built_once(st.just)
