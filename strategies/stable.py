"""Draws that depend only on the strategies and the seed.

Hypothesis (6.1xx) mixes constants found in the source of every *local* module imported so
far (the literals of this repository, of a fork under test, of a user's placement) into a
share of its draws. A derandomized run's cases would then change with any edit anywhere in the
repository, and with the order in which modules happen to be imported (two xdist workers
differ), so a verdict could change with neither the strategies nor the target changed. We
turn that source of values off; Hypothesis' own constants (edge values of each type) stay.
"""

from __future__ import annotations


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
