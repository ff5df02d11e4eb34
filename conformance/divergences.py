"""Known divergences: documented, precise exceptions to the contract for one target.

A divergence file (TOML, kept by the target's owner) lists entries::

    [[divergence]]
    id = "gather-namedtuple-becomes-tuple"
    utility = "gather_state_dict"            # or a list of utilities
    reason = "torch rebuilds every tuple subclass as a plain tuple"
    match = "container is tuple, expected namedtuple:"   # regex over one difference line
    scope = "sharded_tensor_not_dim0_in_rank_order"    # optional: a predicate of conformance.scopes
    replay = "sdc1:..."                      # a minimal case that shows it

An entry excuses exactly the difference lines of its utilities that its ``match`` regex finds,
in cases its ``scope`` (if any) selects; any other line of the same case still fails it. Entries that never matched in a run, or whose
replay case no longer diverges, are reported.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from conformance.case import Case
from conformance.scopes import SCOPES

SHIPPED = Path(__file__).parent / "known_divergences"


class DivergenceFileError(ValueError):
    """A divergence file that cannot be used; one line for the user."""


@dataclass(frozen=True)
class Divergence:
    id: str
    utilities: tuple[str, ...]
    reason: str
    match: re.Pattern[str]
    replay: str
    scope: str | None = None

    def applies(self, case: Case, line: str) -> bool:
        if case.utility not in self.utilities or self.match.search(line) is None:
            return False
        return self.scope is None or SCOPES[self.scope](case)


@dataclass
class Divergences:
    """The entries of one file, and how often each excused something in this process."""

    entries: tuple[Divergence, ...]
    source: str = "none"
    hits: dict[str, int] = field(default_factory=dict)

    def excuse(self, case: Case, diffs: list[str]) -> tuple[list[str], dict[str, int]]:
        """(lines no entry excuses, {entry id: lines it excused})."""
        left: list[str] = []
        used: dict[str, int] = {}
        for line in diffs:
            entry = next((e for e in self.entries if e.applies(case, line)), None)
            if entry is None:
                left.append(line)
            else:
                used[entry.id] = used.get(entry.id, 0) + 1
        for key, count in used.items():
            self.hits[key] = self.hits.get(key, 0) + count
        return left, used

    def for_utility(self, utility: str) -> list[Divergence]:
        return [e for e in self.entries if utility in e.utilities]


def load_divergences(name: str | None) -> Divergences:
    """``None`` or ``"none"``: no entries; a shipped name (``"torch"``); or a TOML file path."""
    if name in (None, "none"):
        return Divergences(())
    path = SHIPPED / f"{name}.toml" if (SHIPPED / f"{name}.toml").exists() else Path(name)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise DivergenceFileError(
            f"cannot read known-divergence file {name!r} ({exc.strerror}); use a path or one of: {shipped}, none"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise DivergenceFileError(f"known-divergence file {path} is not valid TOML: {exc}") from None
    entries = []
    for i, raw in enumerate(data.get("divergence", [])):
        try:
            utilities = raw["utility"]
            entries.append(
                Divergence(
                    id=raw["id"],
                    utilities=tuple([utilities] if isinstance(utilities, str) else utilities),
                    reason=raw["reason"],
                    match=re.compile(raw["match"]),
                    replay=raw["replay"],
                    scope=raw.get("scope"),
                )
            )
            if raw.get("scope") is not None and raw["scope"] not in SCOPES:
                known = ", ".join(sorted(SCOPES))
                raise DivergenceFileError(
                    f"{path}: entry {raw['id']} names unknown scope {raw['scope']!r}; known: {known}"
                )
        except KeyError as exc:
            raise DivergenceFileError(f"{path}: entry {i + 1} lacks the field {exc.args[0]!r}") from None
        except re.error as exc:
            raise DivergenceFileError(
                f"{path}: entry {raw.get('id', i + 1)} has a bad match regex: {exc}"
            ) from None
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise DivergenceFileError(f"{path}: duplicate divergence ids")
    return Divergences(tuple(entries), str(path))
