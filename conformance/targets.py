"""Targets: the module whose state-dict utilities are under test.

A target is any importable module that provides the utilities under torch's underscored
names (``_gather_state_dict``) or plain ones (``gather_state_dict``). ``impl`` and ``torch``
are built-in aliases; anything else is a module path (a fork).
"""

from __future__ import annotations

import importlib
import importlib.util
import traceback
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

from conformance.utilities import UTILITY_NAMES

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

    def attribute(self, utility: str) -> str | None:
        """The name under which the target provides ``utility`` (underscored first), or None."""
        for name in (f"_{utility}", utility):
            if callable(getattr(self.module, name, None)):
                return name
        return None

    def function(self, utility: str) -> Any | None:
        """The target's function for ``utility`` (underscored name first), or None."""
        name = self.attribute(utility)
        return None if name is None else getattr(self.module, name)

    def missing(self) -> list[str]:
        return [u for u in UTILITY_NAMES if self.function(u) is None]


@cache
def load_target(name: str) -> Target:
    """Import a target by alias or module path; raises TargetError with a one-line reason."""
    path = ALIASES.get(name, name)
    try:
        module = importlib.import_module(path)
    except Exception as exc:  # a fork may raise anything while it is imported
        raise TargetError(_import_failure(name, path, exc)) from None
    target = Target(name, module)
    if len(target.missing()) == len(UTILITY_NAMES):
        raise TargetError(
            f"target {name!r} ({target.file}) provides none of the state-dict utilities "
            f"(expected e.g. _gather_state_dict or gather_state_dict)"
        )
    return target


def _import_failure(name: str, path: str, exc: Exception) -> str:
    """One line for a target that cannot be imported: not found, or the module (or something
    it imports) raised while it was imported; the latter names the file, the exception and
    where it was raised."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and f"{path}.".startswith(f"{exc.name}."):
        known = ", ".join(ALIASES)
        return f"cannot import target {name!r} ({exc}); use one of {known} or an importable module path"
    problem = " ".join(f"{type(exc).__name__}: {_message(exc)}".split())  # one line, whatever the text
    return (
        f"cannot import target {name!r}: module {path} ({_module_file(path)}) raised {problem} "
        f"at {_raise_site(exc)}; fix it so that `python -c 'import {path}'` succeeds"
    )


def _message(exc: Exception) -> str:
    """The exception's message (a SyntaxError's without its own location suffix)."""
    return exc.msg if isinstance(exc, SyntaxError) else str(exc)


def _raise_site(exc: Exception) -> str:
    """file:line of the offending source: a SyntaxError's own location, else the innermost
    frame of the module being imported (the last ``<module>`` frame of the traceback)."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    in_modules = [f for f in frames if f.name == "<module>"] or frames
    return f"{in_modules[-1].filename}:{in_modules[-1].lineno}" if in_modules else "?"


def _module_file(path: str) -> str:
    """The file ``path`` would be imported from, or ``?``."""
    try:
        spec = importlib.util.find_spec(path)
    except Exception:  # a parent package that itself fails to import
        return "?"
    return (spec.origin if spec else None) or "?"
