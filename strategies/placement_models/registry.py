"""The placement registry: kinds by name, and user models loaded by reference."""

from __future__ import annotations

import importlib

from strategies.placement_models.base import PlacementModel

_REGISTRY: dict[str, PlacementModel] = {}
_VERSION = [0]  # bumped whenever the registry changes: keys the caches of what models compute


def registry_version() -> int:
    """A number that changes whenever a kind is registered or forgotten: caches of what the
    models compute (shapes, torch placements) include it in their keys."""
    return _VERSION[0]


def register_placement(model: PlacementModel, *, replace: bool = False) -> PlacementModel:
    """Make ``model`` drawable and usable by kind; an existing kind needs ``replace=True``."""
    if not isinstance(model, PlacementModel) or not model.kind:
        raise TypeError(f"{model!r} does not implement the PlacementModel protocol")
    if model.kind in _REGISTRY and not replace and _REGISTRY[model.kind] is not model:
        raise ValueError(f"placement kind {model.kind!r} is already registered")
    _REGISTRY[model.kind] = model
    _VERSION[0] += 1
    return model


def get_placement_model(kind: str) -> PlacementModel:
    """The registered model for ``kind``; ``KeyError`` listing the known kinds otherwise."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown placement kind {kind!r}; registered: {sorted(_REGISTRY)}") from None


def unregister_placement(kind: str) -> None:
    """Forget ``kind`` (for tests that register a plug-in temporarily)."""
    _REGISTRY.pop(kind, None)
    _VERSION[0] += 1


def registered_placements() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_REGISTRY)


def load_placement(reference: str) -> PlacementModel:
    """Import ``"package.module:Name"`` (a model class or instance) and register it.

    Loading the same reference twice is harmless: the newer object replaces the older.
    """
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:ModelName', got {reference!r}")
    obj = getattr(importlib.import_module(module_name), attr)
    model = obj() if isinstance(obj, type) else obj
    return register_placement(model, replace=True)
