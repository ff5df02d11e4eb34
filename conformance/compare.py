"""Compare an expected observation tree (from the oracle) with an observed one (from a rank).

Data movement is compared bitwise (NaN-aware, -0.0 distinct from 0.0); a tolerance applies
only where the expected leaf says a reduction's order may legitimately vary. Every difference
is one line: ``rank 1, state_dict['a'][0]: dtype is float32, expected float64``.
"""

from __future__ import annotations

from typing import Any

import torch

from conformance.observation import (
    ANY,
    Container,
    Outcome,
    RaisedObs,
    TensorObs,
    Tolerance,
    ValueObs,
)


def format_key(key: Any) -> str:
    return f"[{key!r}]"


def compare_outcomes(expected: Outcome, observed: Outcome, rank: int, root: str = "state_dict") -> list[str]:
    """Every difference between two outcomes of one rank, one line each."""
    diffs: list[str] = []
    _compare(expected.result, observed.result, f"rank {rank}, {root}", "", diffs)
    for name, tree in expected.mutated.items():
        if name not in observed.mutated:
            diffs.append(f"rank {rank}, {name}: not observed")
            continue
        _compare(tree, observed.mutated[name], f"rank {rank}, {name}", "", diffs)
    return diffs


def _compare(expected: Any, observed: Any, where: str, path: str, diffs: list[str]) -> None:
    here = f"{where}{path}"
    if expected is ANY:
        return
    if isinstance(expected, RaisedObs) or isinstance(observed, RaisedObs):
        _compare_raised(expected, observed, here, diffs)
        return
    if type(expected) is not type(observed):
        diffs.append(f"{here}: is {_summary(observed)}, expected {_summary(expected)}")
        return
    if isinstance(expected, Container):
        if expected.kind != observed.kind:
            diffs.append(f"{here}: container is {observed.kind}, expected {expected.kind}")
        if expected.keys != observed.keys:
            diffs.append(f"{here}: keys are {list(observed.keys)}, expected {list(expected.keys)}")
            if set(expected.keys) != set(observed.keys):
                return
        by_key = dict(zip(observed.keys, observed.children, strict=True))
        for key, child in zip(expected.keys, expected.children, strict=True):
            _compare(child, by_key[key], where, path + format_key(key), diffs)
    elif isinstance(expected, TensorObs):
        _compare_tensor(expected, observed, here, diffs)
    elif isinstance(expected, ValueObs):
        if expected.type_name != observed.type_name or not _same_value(expected.value, observed.value):
            diffs.append(f"{here}: value is {_summary(observed)}, expected {_summary(expected)}")


def _compare_raised(expected: Any, observed: Any, here: str, diffs: list[str]) -> None:
    if not isinstance(observed, RaisedObs):
        diffs.append(
            f"{here}: returned {_summary(observed)}, expected to raise {expected.type_name}({expected.message!r})"
        )
    elif not isinstance(expected, RaisedObs):
        diffs.append(
            f"{here}: raised {observed.type_name}: {observed.message}, expected {_summary(expected)}"
        )
    elif expected.type_name not in (ANY, observed.type_name):
        diffs.append(
            f"{here}: raised {observed.type_name}: {observed.message}, expected {expected.type_name}"
        )
    elif expected.message not in observed.message:
        diffs.append(
            f"{here}: raised {observed.type_name}: {observed.message!r}, expected a message containing {expected.message!r}"
        )


TENSOR_FACTS = (
    "cls",
    "device_type",
    "dtype",
    "shape",
    "stride",
    "local_shape",
    "placements",
    "mesh_shape",
    "aliases",
    "pinned",
    "shared",
)


def _compare_tensor(expected: TensorObs, observed: TensorObs, here: str, diffs: list[str]) -> None:
    for name in TENSOR_FACTS:
        want, got = getattr(expected, name), getattr(observed, name)
        if want is ANY or want == got:
            continue
        if name == "stride" and same_layout(observed.local_shape, want, got):
            continue
        diffs.append(f"{here}: {_fact_label(name)} is {_show(name, got)}, expected {_show(name, want)}")
    if expected.data is None or expected.data is ANY:
        return
    if observed.data is None:
        diffs.append(f"{here}: holds no local data, expected {tuple(expected.data.shape)}")
        return
    mismatch = tensor_mismatch(expected.data, observed.data, expected.tolerance)
    if mismatch:
        diffs.append(f"{here}: {mismatch}")


def same_layout(shape: object, want: tuple[int, ...], got: tuple[int, ...]) -> bool:
    """Strides agree where they matter: a side of size 0 or 1 makes its own stride irrelevant,
    and an empty tensor has no layout at all."""
    if not isinstance(shape, tuple) or len(shape) != len(want) or len(want) != len(got):
        return False
    if 0 in shape:
        return True
    return all(w == g for size, w, g in zip(shape, want, got, strict=True) if size > 1)


def tensor_mismatch(
    expected: torch.Tensor, observed: torch.Tensor, tolerance: Tolerance | None = None
) -> str:
    """Empty when equal (bitwise; NaN == NaN; -0.0 != 0.0), else a short description."""
    if expected.shape != observed.shape:
        return f"local data shape is {tuple(observed.shape)}, expected {tuple(expected.shape)}"
    if expected.dtype != observed.dtype:
        return f"local data dtype is {observed.dtype}, expected {expected.dtype}"
    if expected.numel() == 0:
        return ""
    if tolerance is not None and (expected.is_floating_point() or expected.is_complex()):
        close = torch.isclose(observed, expected, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
    else:
        close = _bitwise_equal(expected, observed)
    if bool(close.all()):
        return ""
    bad = (~close).nonzero()[0].tolist()
    index = tuple(bad)
    return (
        f"data differs at {list(index)} ({int((~close).sum())} of {expected.numel()} elements):"
        f" {observed[index].item()!r}, expected {expected[index].item()!r}"
    )


def _bitwise_equal(expected: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    if expected.is_complex():
        return _bitwise_equal(torch.view_as_real(expected), torch.view_as_real(observed)).all(-1)
    if expected.is_floating_point():
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[expected.element_size()]
        e, o = expected.contiguous().view(width), observed.contiguous().view(width)
        nan_both = torch.isnan(expected) & torch.isnan(observed)
        return (e == o) | nan_both
    return expected == observed


def _same_value(expected: Any, observed: Any) -> bool:
    if isinstance(expected, float) and isinstance(observed, float):
        if expected != expected:
            return observed != observed
        return expected == observed and str(expected) == str(observed)  # -0.0 vs 0.0
    return type(expected) is type(observed) and expected == observed


def _fact_label(name: str) -> str:
    return {"cls": "class", "device_type": "device", "aliases": "aliases input"}.get(name, name)


def _show(name: str, value: Any) -> str:
    if name == "dtype":
        return f"torch.{value}"
    if isinstance(value, tuple):
        return str(value)
    return repr(value) if isinstance(value, str) and name == "aliases" else str(value)


def _summary(obs: Any) -> str:
    if isinstance(obs, TensorObs):
        return f"{obs.cls}(shape={obs.shape}, dtype=torch.{obs.dtype})"
    if isinstance(obs, Container):
        return f"{obs.kind} of {len(obs.keys)}"
    if isinstance(obs, ValueObs):
        return f"{obs.type_name} {obs.value!r}"
    if isinstance(obs, RaisedObs):
        return f"{obs.type_name}({obs.message!r})"
    return repr(obs)
