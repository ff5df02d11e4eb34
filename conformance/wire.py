"""How a rank's reply travels to the driver: pickled, tensors compactly.

A contiguous CPU tensor that needs no grad (what observations hold) travels as its raw bytes,
dtype and shape, and is rebuilt with the same bits: torch's own pickling goes through a nested
storage pickle per tensor, which costs more than the rest of an observation. Any other tensor
is pickled by torch, except that torch 2.13's legacy storage format has no uint16, uint32,
uint64 or float8 storage (the bytes are written but the driver cannot load them): such a
tensor is sent as its same-width integer view and rebuilt (same shape, strides, bits).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

_SIGNED_TWIN = {
    getattr(torch, name): signed
    for name, signed in (
        ("uint16", torch.int16),
        ("uint32", torch.int32),
        ("uint64", torch.int64),
        *(
            (f8, torch.uint8)
            for f8 in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
        ),
    )
    if hasattr(torch, name)
}


def _unsigned(signed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return signed.view(dtype)


def _from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)


def _compact(obj: torch.Tensor) -> bool:
    return (
        obj.device.type == "cpu"
        and not obj.requires_grad
        and obj.is_contiguous()
        and not obj.is_conj()
        and not obj.is_neg()
    )


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and _compact(obj):
            # contiguous: the elements lie in order from the storage offset (a size-1 dim may
            # have any stride, so reshape(-1) need not give stride 1)
            flat = torch.as_strided(obj, (obj.numel(),), (1,), obj.storage_offset())
            raw = flat.view(torch.uint8).numpy().tobytes() if obj.numel() else b""
            return _from_bytes, (raw, obj.dtype, tuple(obj.shape))
        if type(obj) is torch.Tensor and obj.dtype in _SIGNED_TWIN:
            return _unsigned, (obj.detach().view(_SIGNED_TWIN[obj.dtype]), obj.dtype)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """``pickle.dumps(obj)``, carrying wide unsigned tensors too (see module docstring)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()
