"""Draws that depend only on the strategies and the seed.

Hypothesis (6.1xx) mixes constants found in the source of every *local* module imported so
far (the literals of this repository, of a fork under test, of a user's placement) into a
share of its draws. A derandomized run's cases would then change with any edit anywhere in the
repository, and with the order in which modules happen to be imported (two xdist workers
differ), so a verdict could change with neither the strategies nor the target changed. We
turn that source of values off; Hypothesis' own constants (edge values of each type) stay.

Hypothesis also seeds a derandomized run from the test's source, docstring included; the suite
seeds each property from its source without the docstring (:func:`docstring_free_seed`).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any


def freeze_local_constants() -> None:
    """Make Hypothesis ignore constants from local modules (idempotent; a no-op on a
    Hypothesis without that feature)."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - a Hypothesis without the provider module
        return
    constants = getattr(providers, "Constants", None)
    if constants is None or not hasattr(providers, "_get_local_constants"):
        return
    empty = constants()
    providers._get_local_constants = lambda: empty
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    if cache is not None and hasattr(cache, "cache"):
        cache.cache.clear()


def docstring_free_seed(test: Callable[..., Any]) -> int:
    """The seed a derandomized Hypothesis run of ``test`` draws from (its function digest:
    the source without decorators and comments, and the signature), with the docstring left
    out too: documenting a property does not change the cases it draws."""
    from hypothesis.internal.reflection import _clean_source, get_signature

    source = textwrap.dedent(inspect.getsource(test))
    function = ast.parse(source).body[0]
    body = getattr(function, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        if isinstance(body[0].value.value, str):  # the docstring's lines, gone
            lines = source.splitlines(keepends=True)
            source = "".join(lines[: body[0].lineno - 1] + lines[body[0].end_lineno or body[0].lineno :])
    hasher = hashlib.sha384()
    hasher.update(_clean_source(source))
    hasher.update(repr(get_signature(test)).encode())
    return int.from_bytes(hasher.digest(), "big")
