"""How a rank's reply travels to the driver: pickled, with the tensors pickle cannot carry.

torch 2.13 pickles a tensor through its legacy storage format, which has no uint16, uint32,
uint64 or float8 storage: the bytes are written but the driver cannot load them.
:func:`dumps` sends such a tensor as its same-width integer view and rebuilds it (same
shape, strides, bits) on load.
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


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.dtype in _SIGNED_TWIN:
            return _unsigned, (obj.detach().view(_SIGNED_TWIN[obj.dtype]), obj.dtype)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """``pickle.dumps(obj)``, carrying wide unsigned tensors too (see module docstring)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()
