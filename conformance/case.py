"""The Case: one call of one utility, described completely enough to reproduce it alone.

A Case is frozen, picklable and round-trips through JSON (``to_json`` / ``from_json``) and
through a one-line blob (``to_blob`` / ``from_blob``) that goes into replay commands.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from strategies.spec import Spec, on_rank, spec_from_json, spec_to_json

BLOB_PREFIX = "sdc1:"

# Keyword arguments are JSON scalars or lists; these become tuples when the call is made.
TUPLE_KWARGS = frozenset({"ranks_only"})


#: The member of a record that carries a case beside other fields (a failure ``fuzz`` saved).
RECORD_CASE = "case"


class CaseError(ValueError):
    """A case file or blob that cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class Case:
    """One call: ``utility`` on ``world_size`` ranks over the state dict ``state_dict``.

    ``other`` is the second state dict where the utility takes one (the destination of
    ``copy_state_dict``, the compared dict of ``check_state_dict_similarity``, the
    ``local_state_dict`` of broadcast/distribute). ``kwargs`` are the utility's own keyword
    arguments in JSON form (``device="cpu"``, ``pg="default"`` ...); the conformance runner
    turns them into live objects on each rank.
    """

    utility: str
    world_size: int
    seed: int
    state_dict: Spec
    other: Spec | None = None
    kwargs: tuple[tuple[str, Any], ...] = field(default=())
    backend: str = "gloo"

    def __post_init__(self) -> None:
        # one canonical order, so equal calls are equal cases whatever order they were built in
        object.__setattr__(self, "kwargs", tuple(sorted(self.kwargs)))

    def kwarg(self, name: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(name, default)

    def with_kwargs(self, **fixed: Any) -> Case:
        """This case with ``fixed`` keyword arguments forced (``None`` removes one)."""
        kwargs = dict(self.kwargs)
        for name, value in fixed.items():
            if value is None:
                kwargs.pop(name, None)
            else:
                kwargs[name] = value
        return replace(self, kwargs=tuple(kwargs.items()))

    def on_rank(self, rank: int) -> Case:
        """This case as ``rank`` holds it (leaves held by some ranks only resolved)."""
        other = None if self.other is None else on_rank(self.other, rank)
        return replace(self, state_dict=on_rank(self.state_dict, rank), other=other)

    def call_kwargs(self) -> dict[str, Any]:
        return {k: tuple(v) if k in TUPLE_KWARGS else v for k, v in self.kwargs}

    def describe(self) -> str:
        """``gather_state_dict(cpu_offload=True) on 2 ranks``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs)
        return f"{self.utility}({args}) on {self.world_size} ranks"

    # -- serialisation

    def to_json(self) -> dict[str, Any]:
        return {
            "utility": self.utility,
            "world_size": self.world_size,
            "seed": self.seed,
            "backend": self.backend,
            "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.kwargs},
            "state_dict": spec_to_json(self.state_dict),
            "other": None if self.other is None else spec_to_json(self.other),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Case:
        try:
            return cls(
                utility=obj["utility"],
                world_size=int(obj["world_size"]),
                seed=int(obj["seed"]),
                backend=obj.get("backend", "gloo"),
                kwargs=tuple(
                    (k, tuple(v) if isinstance(v, list) else v) for k, v in obj.get("kwargs", {}).items()
                ),
                state_dict=spec_from_json(obj["state_dict"]),
                other=None if obj.get("other") is None else spec_from_json(obj["other"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CaseError(f"not a valid case: {type(exc).__name__}: {exc}") from None

    def to_blob(self) -> str:
        raw = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()
        return BLOB_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode()

    @classmethod
    def from_blob(cls, blob: str) -> Case:
        if not blob.startswith(BLOB_PREFIX):
            raise CaseError(f"a case blob starts with {BLOB_PREFIX!r}; got {blob[:20]!r}")
        try:
            raw = zlib.decompress(base64.urlsafe_b64decode(blob[len(BLOB_PREFIX) :].encode()))
            obj = json.loads(raw)
        except (ValueError, zlib.error) as exc:
            raise CaseError(f"case blob is damaged ({exc}); copy the whole blob") from None
        return cls.from_json(obj)


def load_case(text_or_path: str) -> Case:
    """A case from a blob, a JSON text, or the path of a JSON file: a case or a record
    holding one (``case_record``, as ``fuzz`` saves failures)."""
    text = text_or_path.strip()
    if text.startswith(BLOB_PREFIX):
        return Case.from_blob(text)
    if not text.startswith("{"):
        try:
            with open(text) as f:
                text = f.read()
        except OSError as exc:
            raise CaseError(f"cannot read case file {text_or_path!r}: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaseError(f"case file is not valid JSON: {exc}") from None
    if isinstance(obj, dict) and RECORD_CASE in obj:
        obj = obj[RECORD_CASE]
    return Case.from_json(obj)


def case_record(case: Case, **fields: Any) -> dict[str, Any]:
    """A JSON record of ``case`` with ``fields`` beside it, which ``load_case`` reads back."""
    return {**fields, RECORD_CASE: case.to_json()}


def replay_command(case: Case, target: str) -> str:
    return f"python -m conformance replay --target {target} {case.to_blob()}"
