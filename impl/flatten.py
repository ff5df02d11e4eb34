"""flatten_state_dict / unflatten_state_dict in DCP's format: dot-joined keys and object paths."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

PathItem = str | int
ObjPath = tuple[PathItem, ...]
FlattenMapping = dict[str, ObjPath]


def _walk(path: ObjPath, value: Any, out: dict[str, Any], mapping: FlattenMapping) -> None:
    if isinstance(value, Mapping):
        for key, child in value.items():
            _walk((*path, str(key)), child, out, mapping)
    elif isinstance(value, (list, tuple)):
        for index, child in enumerate(value):
            _walk((*path, index), child, out, mapping)
    else:
        flat_key = ".".join(str(item) for item in path)
        if flat_key in out:
            raise ValueError(f"duplicated flatten key {flat_key}")
        out[flat_key] = value
        mapping[flat_key] = path


def flatten_state_dict(state_dict: dict[str, Any]) -> tuple[dict[str, Any], FlattenMapping]:
    """A one-level dict of every leaf (same objects) keyed by its dot-joined path, and the mapping
    from each flat key to its object path (mapping keys as str, sequence indices as int).

    Empty containers vanish; a flat key produced twice raises ValueError("duplicated flatten key ...").
    """
    out: dict[str, Any] = {}
    mapping: FlattenMapping = {}
    for key, value in state_dict.items():
        _walk((str(key),), value, out, mapping)
    return out, mapping


def _slot(container: Any, key: PathItem, make: type) -> Any:
    """The child container of ``container`` at ``key``, created as ``make()`` when missing."""
    if isinstance(key, int):
        while len(container) <= key:
            container.append(None)
        if container[key] is None:
            container[key] = make()
        return container[key]
    if key not in container:
        container[key] = make()
    return container[key]


def unflatten_state_dict(state_dict: dict[str, Any], mapping: FlattenMapping) -> dict[str, Any]:
    """Rebuild the nested tree from a flat dict and its mapping: str path items make dicts,
    int items make lists (gaps filled with None); leaves are the flat dict's objects.

    A flat key missing from ``mapping`` raises KeyError.
    """
    nested: dict[str, Any] = {}
    for flat_key, value in state_dict.items():
        path = mapping[flat_key]
        container: Any = nested
        for here, after in pairwise(path):
            container = _slot(container, here, list if isinstance(after, int) else dict)
        last = path[-1]
        if isinstance(last, int):
            while len(container) <= last:
                container.append(None)
        container[last] = value
    return nested
