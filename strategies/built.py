"""Strategies built once per configuration.

Hypothesis validates a strategy object the first time it is drawn from and caches its
structural properties (emptiness, labels) on the object. A factory that builds a new object
for every draw pays for all of that every time; drawing from the same object draws exactly
the same choices, so caching the objects keeps every derandomized draw unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import strategies as st

F = TypeVar("F", bound=Callable[..., Any])


def built_once(factory: F) -> F:
    """``factory`` with its result cached per (hashable) arguments; called afresh when an
    argument is unhashable (a list, say). For factories whose arguments are a configuration
    (world size, mesh shape, dtypes, kinds), not drawn data, so the cache stays small."""
    cache: dict[Any, Any] = {}

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        key = (_typed(args), _typed(tuple(sorted(kwargs.items(), key=lambda item: item[0]))))
        try:
            return cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable argument
            return factory(*args, **kwargs)
        strategy = cache[key] = factory(*args, **kwargs)
        return strategy

    build.cache_clear = cache.clear  # type: ignore[attr-defined]
    return build  # type: ignore[return-value]


def _typed(values: tuple) -> tuple:
    """``values`` with the type of each value, and of each item of a tuple value, beside it:
    ``(0, 1)`` and ``(False, True)`` are equal, but a strategy of one is not one of the other."""
    return tuple(
        (type(v), tuple((type(x), x) for x in v)) if type(v) is tuple else (type(v), v) for v in values
    )


@built_once
def sampled(elements: tuple) -> st.SearchStrategy:
    """``st.sampled_from(elements)``, one object per (typed) tuple of elements."""
    return st.sampled_from(elements)


@functools.lru_cache(maxsize=1024)
def _one_of(options: tuple[st.SearchStrategy, ...]) -> st.SearchStrategy:
    return st.one_of(list(options))


def one_of_built(options: list[st.SearchStrategy]) -> st.SearchStrategy:
    """``st.one_of(options)``, the same object for the same option objects (a bounded cache:
    options that are themselves built once keep hitting it)."""
    return _one_of(tuple(options))
