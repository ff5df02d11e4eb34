"""Fixtures shared by the harness's own tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from conformance.world import World, WorldUnavailable


@pytest.fixture(scope="session")
def world_factory() -> Iterator[Callable[..., World]]:
    """``world_factory(size, backend="gloo")``: a live world shared by the whole session."""
    worlds: dict[tuple[int, str], World] = {}

    def get(size: int, backend: str = "gloo") -> World:
        key = (size, backend)
        if key not in worlds:
            try:
                world = World(size, backend)
                world.start()
            except WorldUnavailable as exc:
                pytest.skip(str(exc))
            worlds[key] = world
        return worlds[key]

    yield get
    for world in worlds.values():
        world.close()
