"""Compare an expected observation tree (from the oracle) with an observed one (from a rank),
or two observed ones exactly (:func:`compare_observed`, a target against a baseline target).

Data movement is compared bitwise (NaN-aware, -0.0 distinct from 0.0); a tolerance applies
only where the expected leaf says a reduction's order may legitimately vary. Every difference
is a :class:`Difference` (rank, argument root, path, field, observed, expected), rendered as
one line: ``rank 1, state_dict['a'][0]: dtype is torch.float32, expected torch.float64``.
A container whose keys differ still has the children it shares compared key by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
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
    "same_as",
    "shares",
    "requires_grad",
    "shards",
    "local_shapes",
)
_FACT_FIELDS = {"cls": "class", "device_type": "device"}

#: The fields a difference can be about (what known divergences name as their symptom).
FIELDS = (
    "kind",  # a different sort of object: observed / expected say which (Tensor, dict, NoneType, ...)
    "container",  # container kind
    "keys",  # container keys (in order)
    *(_FACT_FIELDS.get(name, name) for name in TENSOR_FACTS),  # a tensor's facts
    "data",  # local data; observed / expected: the first differing elements
    "value",  # a non-tensor leaf: "<type> <repr>"
    "position",  # a BytesIO leaf's stream position
    "raised",  # "<type>: <message>" of the exception raised, or "nothing" when the call returned
    "message",  # the exception message (expected: a substring it must contain)
    "observed",  # an argument the rank never reported
    "job",  # a law's job failed on the world (hang, crash, error)
)


@dataclass(frozen=True)
class LeafInfo:
    """What the case's input spec says about the leaf a difference is on."""

    kind: str  # "Tensor", "DTensor", "ShardedTensor", "value", "container", "absent"
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    placements: tuple[str, ...] | None = None
    mesh_shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if v is not None
        }


@dataclass(frozen=True)
class Difference:
    """One way in which a rank's outcome differs from the expected one."""

    rank: int
    root: str  # the argument the path starts from: state_dict, local_state_dict, ...
    path: tuple[Any, ...]
    field: str  # one of FIELDS
    observed: Any
    expected: Any
    detail: str = ""  # the rendered tail, where "<field> is <observed>, expected <expected>" won't do
    leaf: LeafInfo | None = None
    mutated: bool = False  # in an argument after the call (not in what the call returned)
    observed_data: torch.Tensor | None = dc_field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        return f"rank {self.rank}, {self.root}{''.join(format_key(k) for k in self.path)}"

    def render(self) -> str:
        tail = self.detail or f"{self.field} is {self.observed}, expected {self.expected}"
        return f"{self.where}: {tail}"

    __str__ = render

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "root": self.root,
            "path": [k if isinstance(k, (str, int)) else repr(k) for k in self.path],
            "field": self.field,
            "observed": as_text(self.observed),
            "expected": as_text(self.expected),
            "leaf": self.leaf.to_json() if self.leaf else None,
            "mutated": self.mutated,
            "message": self.render(),
        }


def as_text(value: Any) -> str:
    """The text a known divergence's ``observed`` / ``expected`` patterns are matched against."""
    return value if isinstance(value, str) else str(value)


def format_key(key: Any) -> str:
    return f"[{key!r}]"


class _Diffs:
    """Collects the differences of one rank under one argument root."""

    def __init__(self, rank: int, root: str, mutated: bool = False, exact: bool = False) -> None:
        self.rank, self.root, self.mutated = rank, root, mutated
        self.exact = exact  # the expected side is an observation too: nothing in it is open
        self.found: list[Difference] = []

    def add(
        self, path: tuple, name: str, observed: Any, expected: Any, detail: str = "", **extra: Any
    ) -> None:
        self.found.append(
            Difference(
                self.rank, self.root, path, name, observed, expected, detail, mutated=self.mutated, **extra
            )
        )


def compare_outcomes(
    expected: Outcome, observed: Outcome, rank: int, root: str = "state_dict", exact: bool = False
) -> list[Difference]:
    """Every difference between two outcomes of one rank (``exact``: see :func:`compare_observed`)."""
    diffs = _Diffs(rank, root, exact=exact)
    _compare(expected.result, observed.result, (), diffs)
    found = diffs.found
    names = [*expected.mutated, *(n for n in observed.mutated if exact and n not in expected.mutated)]
    for name in names:
        mutated = _Diffs(rank, name, mutated=True, exact=exact)
        if name not in observed.mutated:
            mutated.add((), "observed", False, True, "not observed")
        elif name not in expected.mutated:
            mutated.add((), "observed", True, False, "observed, expected not observed")
        else:
            _compare(expected.mutated[name], observed.mutated[name], (), mutated)
        found += mutated.found
    return found


def compare_observed(
    baseline: Outcome, observed: Outcome, rank: int, root: str = "state_dict"
) -> list[Difference]:
    """Every difference between what a baseline target and the target under test observed on
    one rank for the same case, exactly: data bitwise (NaN-aware), an exception's type and
    whole message, data held on one side only; ``expected`` is the baseline's side."""
    return compare_outcomes(baseline, observed, rank, root, exact=True)


def _compare(expected: Any, observed: Any, path: tuple, diffs: _Diffs) -> None:
    if expected is ANY:
        return
    if isinstance(expected, RaisedObs) or isinstance(observed, RaisedObs):
        _compare_raised(expected, observed, path, diffs)
        return
    if type(expected) is not type(observed):
        diffs.add(
            path,
            "kind",
            kind_of(observed),
            kind_of(expected),
            f"is {_summary(observed)}, expected {_summary(expected)}",
        )
        return
    if isinstance(expected, (Container, ValueObs)):
        _compare_identity(expected, observed, path, diffs)
    if isinstance(expected, Container):
        if expected.kind != observed.kind:
            diffs.add(path, "container", observed.kind, expected.kind)
        if expected.keys != observed.keys:
            diffs.add(
                path,
                "keys",
                list(observed.keys),
                list(expected.keys),
                f"keys are {list(observed.keys)}, expected {list(expected.keys)}",
            )
        by_key = dict(zip(observed.keys, observed.children, strict=True))
        for key, child in zip(expected.keys, expected.children, strict=True):
            if key in by_key:
                _compare(child, by_key[key], (*path, key), diffs)
    elif isinstance(expected, TensorObs):
        _compare_tensor(expected, observed, path, diffs)
    elif isinstance(expected, ValueObs):
        if expected.type_name != observed.type_name or not _same_value(expected.value, observed.value):
            diffs.add(path, "value", _summary(observed), _summary(expected))
        if expected.position is not ANY and expected.position != observed.position:
            diffs.add(path, "position", observed.position, expected.position)


def _compare_identity(expected: Container | ValueObs, observed: Any, path: tuple, diffs: _Diffs) -> None:
    if expected.same_as is not ANY and expected.same_as != observed.same_as:
        diffs.add(
            path,
            "same_as",
            observed.same_as,
            expected.same_as,
            f"is {_show('same_as', observed.same_as)}, expected {_show('same_as', expected.same_as)}",
        )


def kind_of(obs: Any) -> str:
    """The sort of object an observation is: Tensor / DTensor / ShardedTensor, a container
    kind, or a value's type name."""
    if isinstance(obs, TensorObs):
        return obs.cls
    if isinstance(obs, Container):
        return obs.kind
    if isinstance(obs, ValueObs):
        return obs.type_name
    return type(obs).__name__


def _compare_raised(expected: Any, observed: Any, path: tuple, diffs: _Diffs) -> None:
    if not isinstance(observed, RaisedObs):
        diffs.add(
            path,
            "raised",
            "nothing",
            expected.type_name,
            f"returned {_summary(observed)}, expected to raise {expected.type_name}({expected.message!r})",
        )
    elif not isinstance(expected, RaisedObs):
        diffs.add(
            path,
            "raised",
            f"{observed.type_name}: {observed.message}",
            "nothing",
            f"raised {observed.type_name}: {observed.message}, expected {_summary(expected)}",
        )
    elif expected.type_name not in (ANY, observed.type_name):
        diffs.add(
            path,
            "raised",
            f"{observed.type_name}: {observed.message}",
            expected.type_name,
            f"raised {observed.type_name}: {observed.message}, expected {expected.type_name}",
        )
    elif expected.message != observed.message if diffs.exact else expected.message not in observed.message:
        wanted = repr(expected.message) if diffs.exact else f"a message containing {expected.message!r}"
        diffs.add(
            path,
            "message",
            observed.message,
            expected.message,
            f"raised {observed.type_name}: {observed.message!r}, expected {wanted}",
        )


def _compare_tensor(expected: TensorObs, observed: TensorObs, path: tuple, diffs: _Diffs) -> None:
    for name in TENSOR_FACTS:
        want, got = getattr(expected, name), getattr(observed, name)
        if want is ANY or want == got:
            continue
        if name == "stride" and same_layout(observed.local_shape, want, got):
            continue
        field_name = _fact_label(name)
        if name == "same_as":
            detail = f"is {_show(name, got)}, expected {_show(name, want)}"
        else:
            label = {"aliases": "aliases input", "shares": "shares storage with"}.get(field_name, field_name)
            detail = f"{label} is {_show(name, got)}, expected {_show(name, want)}"
        diffs.add(path, field_name, got, want, detail)
    if expected.data is None and observed.data is not None and diffs.exact:
        diffs.add(path, "data", tuple(observed.data.shape), None, "holds local data, expected none")
    if expected.data is None or expected.data is ANY:
        return
    if observed.data is None:
        diffs.add(
            path,
            "data",
            None,
            tuple(expected.data.shape),
            f"holds no local data, expected {tuple(expected.data.shape)}",
        )
        return
    mismatch = tensor_mismatch(expected.data, observed.data, expected.tolerance)
    if mismatch:
        diffs.add(path, "data", "differs", "equal", mismatch, observed_data=observed.data)


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
        nan_both = torch.isnan(expected.float()) & torch.isnan(observed.float())  # float8 too
        return (e == o) | nan_both
    return expected == observed


def _same_value(expected: Any, observed: Any) -> bool:
    if isinstance(expected, float) and isinstance(observed, float):
        if expected != expected:
            return observed != observed
        return expected == observed and str(expected) == str(observed)  # -0.0 vs 0.0
    return type(expected) is type(observed) and expected == observed


def _fact_label(name: str) -> str:
    """The difference field of a TensorObs fact."""
    return _FACT_FIELDS.get(name, name)


def _show(name: str, value: Any) -> str:
    if name == "same_as":
        return "a new object" if value is None else f"the input object {value}"
    if name == "shares":
        return ", ".join(value) if value else "nothing"
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
