"""Planted bugs: patched copies of the installed torch's ``_state_dict_utils.py``.

A :class:`PlantedBug` is a text patch (each ``old`` must occur exactly once in torch's file,
so a changed torch fails loudly instead of testing nothing); :func:`write_fork` writes the
patched module into a folder, importable by name once the folder is on ``sys.path``.
:func:`assert_caught` is the check every planted-bug test makes: some drawn case shows the
bug's symptom, unexcused by the known divergences, where torch itself conforms.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from conformance import mesh_examples
from conformance.case import Case
from conformance.check import check_case
from conformance.divergences import Divergences
from conformance.properties import with_unsupported_leaf
from conformance.utilities import TABLE
from conformance.world import World


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
    world_sizes: tuple[int, ...] = (2,)  # the world sizes its cases are drawn for
    examples: int = 80  # cases drawn, at most (80: tests.planted.EXAMPLES); the bug must show among them
    keep: Callable[[Case], bool] | None = None  # of the drawn cases, run only these (None: all)


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


def fork_worlds(bugs: Iterable[PlantedBug], where: Path) -> Iterator[Callable[[int], World]]:
    """For a module fixture: every fork of ``bugs`` written into ``where``, which is put on
    ``sys.path`` before any world starts (spawned ranks inherit it); yields ``get(size)``, a
    world per size, all closed at the end."""
    for bug in bugs:
        write_fork(where, bug)
    sys.path.insert(0, str(where))
    opened: dict[int, World] = {}

    def get(size: int) -> World:
        if size not in opened:
            opened[size] = World(size)
        return opened[size]

    try:
        yield get
    finally:
        for world in opened.values():
            world.close()
        sys.path.remove(str(where))


_CASES: dict[tuple, list[Case]] = {}
#: Each utility's case strategy. Hypothesis seeds a derandomized nested function from its
#: source *with* its decorators (it cannot parse an indented function to drop them), so the
#: ``@given`` lines below keep their text, and the planted bugs their cases.
CASES = {utility.name: utility.cases for utility in TABLE}

EXAMPLES = 80  # cases drawn per (utility, keyword arguments), at most; the bug must show among them


def drawn_cases(bug: PlantedBug) -> list[Case]:
    """EXAMPLES derandomized cases of the bug's utility on 2 ranks (shared by bugs alike), or
    ``bug.examples`` on ``bug.world_sizes`` after the suite's 2x2 examples.

    Derandomized draws are seeded from the source text of the decorated function, so the
    default path below is kept as it was written: changing it changes every bug's cases."""
    key = (bug.utility, bug.kwargs, bug.unsupported, bug.world_sizes, bug.examples)
    if key not in _CASES:
        found: list[Case] = []

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=CASES[bug.utility]((2,)))
        def collect(case: Case) -> None:
            case = case.with_kwargs(**dict(bug.kwargs))
            found.append(with_unsupported_leaf(case) if bug.unsupported else case)

        if (bug.world_sizes, bug.examples) == ((2,), EXAMPLES):
            collect()
        else:
            _draw_on(bug, found)
        _CASES[key] = [*_mesh_examples(bug), *found]
    return [case for case in _CASES[key] if bug.keep is None or bug.keep(case)]


def _mesh_examples(bug: PlantedBug) -> list[Case]:
    """The suite's explicit 2x2 cases of the bug's utility (run first, as the suite does),
    where its world sizes include that mesh's."""
    if mesh_examples.WORLD_SIZE not in bug.world_sizes:
        return []
    cases = [case.with_kwargs(**dict(bug.kwargs)) for case in mesh_examples.examples(bug.utility)]
    return [with_unsupported_leaf(case) for case in cases] if bug.unsupported else cases


def _draw_on(bug: PlantedBug, found: list[Case]) -> None:
    @settings(
        max_examples=bug.examples,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=CASES[bug.utility](bug.world_sizes))
    def collect(case: Case) -> None:
        case = case.with_kwargs(**dict(bug.kwargs))
        found.append(with_unsupported_leaf(case) if bug.unsupported else case)

    collect()


def assert_caught(bug: PlantedBug, worlds: Callable[[int], World], divergences: Divergences) -> None:
    """Some drawn case of ``bug``'s fork shows an unexcused difference matching ``bug.shows``
    where torch itself conforms, and every entry the bug sits next to still shows its own
    symptom, excused, in its replay case."""
    fork = fork_module(bug)
    entries = [e for e in divergences.entries if e.id in bug.entries]
    replays = [Case.from_blob(e.replay) for e in entries if bug.replay_checked]
    unseen = {e.id for e in entries if bug.replay_checked}  # entries whose symptom must still show
    shown = None
    torch_diverges: list[str] = []  # cases that showed the symptom where torch itself diverges
    for case in [*replays, *drawn_cases(bug)]:
        report = check_case(worlds(case.world_size), case, fork, divergences, count=False)
        unseen -= set(report.excused_counts)
        if shown is None:
            candidate = next((d for d in report.diffs if re.search(bug.shows, d.render())), None)
            if candidate is not None:
                on_torch = check_case(worlds(case.world_size), case, "torch", divergences, count=False)
                if on_torch.passed:
                    shown = candidate
                else:
                    torch_diverges.append(on_torch.failure_message())
        if shown is not None and not unseen:
            break
    assert shown is not None, (
        f"{bug.name}: no drawn case showed an unexcused {bug.shows!r} where torch itself conforms"
        + "".join(f"\n(torch itself diverges in a case that showed it:\n{m})" for m in torch_diverges[:2])
    )
    assert not unseen, (
        f"{bug.name}: on the fork, no case showed the excused symptom of {', '.join(sorted(unseen))}"
    )
