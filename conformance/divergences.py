"""Known divergences: documented, precise exceptions to the contract for one target.

A divergence file (TOML, kept by the target's owner) lists the utilities the target lacks on
purpose and the places where it knowingly differs from the contract::

    absent = ["distribute_tensors"]          # optional: utilities the target does not provide

    [[divergence]]
    id = "gather-namedtuple-becomes-tuple"
    utility = "gather_state_dict"            # or a list of utilities (and "law:<name>")
    reason = "torch rebuilds every tuple subclass as a plain tuple"
    field = "container"                      # the symptom: the field of a difference (or a list) ...
    observed = "tuple"                       # ... with the observed value (a regex, full match)
    expected = "namedtuple:.*"               # ... and the expected one (a regex, full match)
    leaf = ["container"]                     # optional: the input leaf kinds it is about
    root = ["state_dict"]                    # optional: the argument roots it is about
    scope = "zero_dim_tensor"                # optional: predicates of conformance.scopes (or a list)
    torch = ">=2.5,<2.15"                    # optional: torch releases it holds for
    as_if = { pin_memory = false }           # optional: judge what was returned instead of
                                             #   the expected raise, as if called so
                                             #   (contract_checks = false: as if the contract
                                             #   checked nothing; the entries its failed checks
                                             #   are about are left unspecified)
    stops_midway = true                      # optional: the excused exception leaves that rank's
                                             #   arguments half-written and its peers blocked
    replay = "sdc1:..."                      # a minimal case that shows it

An entry excuses one difference at a time: the difference's field must be the entry's, its
observed and expected values must match, and the leaf, root and scope are judged on that
difference's own leaf, never on the rest of the case. An entry that could excuse every
difference of its field (no observed, expected or scope) is refused, as are unknown keys.

``stops_midway`` is the one consequence an entry may excuse beyond its symptom: when it
excuses an exception on a rank, the differences in that rank's arguments after the call
(it stopped half-way through writing them) and, on any rank, being left blocked in a
collective the raising rank never joined.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from conformance.case import Case
from conformance.compare import FIELDS, Difference, as_text
from conformance.scopes import SCOPES, leaf_kind
from conformance.utilities import UTILITY_NAMES

SHIPPED = Path(__file__).parent / "known_divergences"
ENTRY_KEYS = (
    "id",
    "utility",
    "reason",
    "field",
    "observed",
    "expected",
    "leaf",
    "root",
    "scope",
    "torch",
    "as_if",
    "stops_midway",
    "replay",
)
REQUIRED_KEYS = ("id", "utility", "reason", "field", "replay")
LEAF_KINDS = ("Tensor", "DTensor", "ShardedTensor", "value", "container", "absent")
_PROBES = ("", "\x00 an unlikely value \u2603", "None", "0", "dict", "Tensor")


class DivergenceFileError(ValueError):
    """A divergence file that cannot be used; one line for the user."""


def torch_version() -> Version:
    import torch

    return Version(Version(torch.__version__).base_version)


@dataclass(frozen=True)
class Divergence:
    id: str
    utilities: tuple[str, ...]
    reason: str
    fields: tuple[str, ...]
    replay: str
    observed: re.Pattern[str] | None = None
    expected: re.Pattern[str] | None = None
    leaves: tuple[str, ...] = ()
    roots: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    torch: SpecifierSet | None = None
    as_if: tuple[tuple[str, Any], ...] = ()
    stops_midway: bool = False

    def active(self, version: Version | None = None) -> bool:
        """Whether the entry holds for the installed torch (or ``version``)."""
        return self.torch is None or self.torch.contains(version or torch_version(), prereleases=True)

    def applies(self, case: Case, diff: Difference) -> bool:
        """Whether this entry excuses ``diff`` (judged on the difference's own leaf)."""
        if case.utility not in self.utilities or diff.field not in self.fields:
            return False
        if self.observed is not None and not self.observed.fullmatch(as_text(diff.observed)):
            return False
        if self.expected is not None and not self.expected.fullmatch(as_text(diff.expected)):
            return False
        if self.roots and diff.root not in self.roots:
            return False
        if self.leaves and leaf_kind(case, diff) not in self.leaves:
            return False
        return all(SCOPES[name](case, diff) for name in self.scopes)


@dataclass
class Divergences:
    """The entries of one file active for the installed torch, and how often each excused
    something in this process."""

    entries: tuple[Divergence, ...]
    source: str = "none"
    absent: tuple[str, ...] = ()
    inactive: tuple[Divergence, ...] = ()
    hits: dict[str, int] = field(default_factory=dict)

    def entry_for(self, case: Case, diff: Difference) -> Divergence | None:
        return next((e for e in self.entries if e.applies(case, diff)), None)

    def excuse(
        self, case: Case, diffs: list[Difference], count: bool = True
    ) -> tuple[list[Difference], list[tuple[str, Difference]]]:
        """(differences no entry excuses, [(entry id, difference it excused)]); with ``count``
        the excused differences count as this run's hits of their entries."""
        left: list[Difference] = []
        excused: list[tuple[str, Difference]] = []
        stopped: dict[int, str] = {}  # rank -> id of the stops_midway entry that excused its raise
        for diff in diffs:
            entry = self.entry_for(case, diff)
            if entry is None:
                left.append(diff)
                continue
            excused.append((entry.id, diff))
            if entry.stops_midway and diff.field == "raised" and diff.observed != "nothing":
                stopped.setdefault(diff.rank, entry.id)
        if stopped:
            first = next(iter(stopped.values()))
            still: list[Difference] = []
            for diff in left:
                if diff.mutated and diff.rank in stopped:
                    excused.append((stopped[diff.rank], diff))
                elif left_blocked(diff):
                    excused.append((first, diff))
                else:
                    still.append(diff)
            left = still
        if count:
            for entry_id, _ in excused:
                self.hits[entry_id] = self.hits.get(entry_id, 0) + 1
        return left, excused

    def describe(self) -> str:
        """``<file> (N entries active for torch X, M inactive; absent: ...)`` for headers."""
        if self.source == "none":
            return "none"
        text = f"{self.source} ({len(self.entries)} entries active for torch {torch_version()}"
        if self.inactive:
            text += f", {len(self.inactive)} inactive"
        if self.absent:
            text += f"; absent: {', '.join(self.absent)}"
        return text + ")"

    def to_json(self) -> dict[str, Any]:
        """The file, the installed torch, and its entries (active or not) with their torch ranges."""

        def entry(e: Divergence) -> dict[str, Any]:
            return {"id": e.id, "utilities": list(e.utilities), "torch": str(e.torch) if e.torch else None}

        return {
            "file": self.source,
            "torch": str(torch_version()),
            "active": [entry(e) for e in self.entries],
            "inactive": [entry(e) for e in self.inactive],
            "absent": list(self.absent),
        }

    def for_utility(self, utility: str) -> list[Divergence]:
        return [e for e in self.entries if utility in e.utilities]


def left_blocked(diff: Difference) -> bool:
    """A rank left waiting in a collective (and so never observed) by another rank's raise."""
    return (diff.field == "raised" and str(diff.observed).startswith("Blocked:")) or diff.field == "observed"


def _known_utility(name: str) -> bool:
    from conformance.laws import LAW_PREFIX, LAWS

    return name in UTILITY_NAMES or (name.startswith(LAW_PREFIX) and name.removeprefix(LAW_PREFIX) in LAWS)


def _matches_anything(pattern: re.Pattern[str]) -> bool:
    return all(pattern.fullmatch(probe) for probe in _PROBES)


def _names(value: Any, what: str, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DivergenceFileError(f"{where}: {what} must be a string or a list of strings")
    return tuple(names)


def divergence_entry(raw: dict[str, Any], where: str) -> Divergence:
    """One ``[[divergence]]`` table as an entry; raises DivergenceFileError naming what is wrong."""
    unknown = [k for k in raw if k not in ENTRY_KEYS]
    if unknown:
        raise DivergenceFileError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(ENTRY_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DivergenceFileError(f"{where}: lacks the key {missing[0]!r}")
    where = f"{where} ({raw['id']})"
    utilities = _names(raw["utility"], "utility", where)
    bad = [u for u in utilities if not _known_utility(u)]
    if bad:
        raise DivergenceFileError(
            f"{where}: unknown utility {bad[0]!r}; known: {', '.join(UTILITY_NAMES)}, law:<name>"
        )
    fields = _names(raw["field"], "field", where)
    if not fields or any(f not in FIELDS for f in fields):
        raise DivergenceFileError(f"{where}: unknown field {list(fields)}; known: {', '.join(FIELDS)}")
    patterns: dict[str, re.Pattern[str] | None] = {}
    for key in ("observed", "expected"):
        try:
            patterns[key] = re.compile(raw[key]) if key in raw else None
        except (re.error, TypeError) as exc:
            raise DivergenceFileError(f"{where}: bad {key} pattern: {exc}") from None
    leaves = _names(raw.get("leaf", []), "leaf", where)
    if any(kind not in LEAF_KINDS for kind in leaves):
        raise DivergenceFileError(f"{where}: leaf kinds are {', '.join(LEAF_KINDS)}; got {list(leaves)}")
    scopes = _names(raw.get("scope", []), "scope", where)
    unknown_scopes = [name for name in scopes if name not in SCOPES]
    if unknown_scopes:
        raise DivergenceFileError(
            f"{where}: unknown scope {unknown_scopes[0]!r}; known: {', '.join(sorted(SCOPES))}"
        )
    if not scopes and all(p is None or _matches_anything(p) for p in patterns.values()):
        raise DivergenceFileError(
            f"{where}: would excuse every {'/'.join(fields)} difference; narrow it with observed, expected or scope"
        )
    try:
        versions = SpecifierSet(raw["torch"]) if "torch" in raw else None
    except InvalidSpecifier:
        raise DivergenceFileError(f"{where}: torch must be a version range like '>=2.13,<2.14'") from None
    as_if = raw.get("as_if", {})
    if not isinstance(as_if, dict):
        raise DivergenceFileError(f"{where}: as_if must be a table of keyword arguments")
    return Divergence(
        id=raw["id"],
        utilities=utilities,
        reason=raw["reason"],
        fields=fields,
        replay=raw["replay"],
        observed=patterns["observed"],
        expected=patterns["expected"],
        leaves=leaves,
        roots=_names(raw.get("root", []), "root", where),
        scopes=scopes,
        torch=versions,
        as_if=tuple(sorted(as_if.items())),
        stops_midway=bool(raw.get("stops_midway", False)),
    )


def load_divergences(name: str | None, version: Version | None = None) -> Divergences:
    """``None`` or ``"none"``: no entries; a shipped name (``"torch"``); or a TOML file path.
    Entries whose torch range excludes the installed torch (or ``version``) are inactive."""
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
    unknown = [k for k in data if k not in ("divergence", "absent")]
    if unknown:
        raise DivergenceFileError(f"{path}: unknown table or key {unknown[0]!r}; known: divergence, absent")
    absent = _names(data.get("absent", []), "absent", str(path))
    bad = [u for u in absent if u not in UTILITY_NAMES]
    if bad:
        raise DivergenceFileError(
            f"{path}: absent names unknown utility {bad[0]!r}; known: {', '.join(UTILITY_NAMES)}"
        )
    entries = []
    for i, raw in enumerate(data.get("divergence", [])):
        if not isinstance(raw, dict):
            raise DivergenceFileError(f"{path}: divergence entries must be [[divergence]] tables")
        entries.append(divergence_entry(raw, f"{path}: entry {i + 1}"))
    ids = [e.id for e in entries]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise DivergenceFileError(f"{path}: duplicate divergence id {duplicate!r}")
    active = tuple(e for e in entries if e.active(version))
    inactive = tuple(e for e in entries if not e.active(version))
    return Divergences(active, str(path), absent, inactive)
