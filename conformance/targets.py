"""Targets: the module whose state-dict utilities are under test.

A target is any importable module that provides the utilities under torch's underscored
names (``_gather_state_dict``) or plain ones (``gather_state_dict``). ``impl`` and ``torch``
are built-in aliases; anything else is a module path (a fork).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

UTILITIES: tuple[str, ...] = (
    "gather_state_dict",
    "offload_state_dict_to_cpu",
    "copy_state_dict",
    "create_cpu_state_dict",
    "check_state_dict_similarity",
    "distribute_tensors",
    "broadcast_tensors",
    "broadcast_state_dict",
    "distribute_state_dict",
    "flatten_state_dict",
    "unflatten_state_dict",
    "all_gather_sharded_tensor",
)

ALIASES = {"impl": "impl", "torch": "torch.distributed._state_dict_utils"}


class TargetError(Exception):
    """The target cannot be used (not importable); the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    name: str  # as the user gave it
    module: ModuleType

    @property
    def module_path(self) -> str:
        return self.module.__name__

    @property
    def file(self) -> str:
        return getattr(self.module, "__file__", "?") or "?"

    def function(self, utility: str) -> Any | None:
        """The target's function for ``utility`` (underscored name first), or None."""
        for name in (f"_{utility}", utility):
            fn = getattr(self.module, name, None)
            if callable(fn):
                return fn
        return None

    def missing(self) -> list[str]:
        return [u for u in UTILITIES if self.function(u) is None]


@cache
def load_target(name: str) -> Target:
    """Import a target by alias or module path; raises TargetError with a one-line reason."""
    path = ALIASES.get(name, name)
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        known = ", ".join(ALIASES)
        raise TargetError(
            f"cannot import target {name!r} ({exc}); use one of {known} or an importable module path"
        ) from None
    target = Target(name, module)
    if len(target.missing()) == len(UTILITIES):
        raise TargetError(
            f"target {name!r} ({target.file}) provides none of the state-dict utilities "
            f"(expected e.g. _gather_state_dict or gather_state_dict)"
        )
    return target
