"""Planted bugs: patched copies of the installed torch's ``_state_dict_utils.py``.

A :class:`PlantedBug` is a text patch (each ``old`` must occur exactly once in torch's file,
so a changed torch fails loudly instead of testing nothing); :func:`write_fork` writes the
patched module into a folder, importable by name once the folder is on ``sys.path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PlantedBug:
    name: str
    entries: tuple[str, ...]  # the known divergences it sits next to
    utility: str
    old: str | tuple[str, ...]  # text(s) of torch's module, each replaced exactly once by ``new``
    new: str | tuple[str, ...]
    shows: str  # regex an unexcused difference line must match
    kwargs: tuple[tuple[str, Any], ...] = ()  # keyword arguments forced on the drawn cases
    unsupported: bool = False  # append an unsupported leaf to every case
    replay_checked: bool = True  # the entry's replay must still show its own symptom, excused


def planted_source(bug: PlantedBug) -> str:
    """torch's module with ``bug`` planted; fails if the patch does not apply exactly once."""
    import torch.distributed._state_dict_utils as original

    with open(original.__file__) as f:
        source = f.read()
    olds = (bug.old,) if isinstance(bug.old, str) else bug.old
    news = (bug.new,) if isinstance(bug.new, str) else bug.new
    for old, new in zip(olds, news, strict=True):
        count = source.count(old)
        assert count == 1, f"planted bug {bug.name}: its patch applies {count} times to {original.__file__}"
        source = source.replace(old, new)
    return source


def fork_module(bug: PlantedBug) -> str:
    """The module name of ``bug``'s fork."""
    return "sdc_planted_" + bug.name.replace("-", "_")


def write_fork(where: Path, bug: PlantedBug) -> str:
    """Write ``bug``'s fork into ``where``; returns its module name."""
    (where / f"{fork_module(bug)}.py").write_text(planted_source(bug))
    return fork_module(bug)
