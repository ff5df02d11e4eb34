"""Fixtures shared by the harness's own tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from conformance.plugin import is_active
from conformance.suite_options import profile_name
from conformance.world import World, WorldUnavailable


def pytest_configure(config: pytest.Config) -> None:
    """The harness's own tests draw under the suite's dev profile (no deadline, its health
    checks off), as they did when the plugin loaded a profile in every run; a run that also
    collects the suite loads the profile it is configured with (``--sdc-profile``) instead."""
    if not is_active(config):
        settings.load_profile(profile_name("dev"))


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
