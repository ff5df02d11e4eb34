"""The shipped known-divergence file of the ``torch`` target is well formed (no world needed).

Every entry has all fields, names a known scope (if any), has a match regex that compiles and
a replay blob that decodes to a Case of one of the entry's utilities.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from conformance.case import Case
from conformance.divergences import SHIPPED, load_divergences
from conformance.laws import LAW_PREFIX, LAWS
from conformance.scopes import SCOPES
from conformance.targets import UTILITIES

TORCH_FILE = SHIPPED / "torch.toml"
REQUIRED = ("id", "utility", "reason", "match", "replay")
FIELDS = {*REQUIRED, "scope"}


def _raw_entries() -> list[dict]:
    return tomllib.loads(TORCH_FILE.read_text()).get("divergence", [])


RAW = _raw_entries() if TORCH_FILE.exists() else []


def _utilities(raw: dict) -> list[str]:
    utility = raw["utility"]
    return [utility] if isinstance(utility, str) else list(utility)


def test_file_exists_and_loads():
    assert TORCH_FILE.exists(), f"{TORCH_FILE} is missing"
    divergences = load_divergences("torch")
    assert divergences.entries, "torch.toml has no entries"
    assert len(divergences.entries) == len(RAW)


def test_ids_are_unique():
    ids = [raw.get("id") for raw in RAW]
    assert len(ids) == len(set(ids)), f"duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}"


@pytest.mark.parametrize("raw", RAW, ids=[str(raw.get("id")) for raw in RAW])
def test_entry_is_well_formed(raw):
    missing = [name for name in REQUIRED if name not in raw]
    assert not missing, f"lacks {', '.join(missing)}"
    unknown = sorted(set(raw) - FIELDS)
    assert not unknown, f"unknown fields {unknown}"
    for name in ("id", "reason", "match", "replay"):
        assert isinstance(raw[name], str) and raw[name].strip(), f"{name} must be a non-empty string"
    assert "\n" not in raw["reason"], "reason must be one line"

    utilities = _utilities(raw)
    assert utilities and all(isinstance(u, str) for u in utilities), (
        "utility must be a name or a list of names"
    )
    for utility in utilities:
        if utility.startswith(LAW_PREFIX):
            assert utility.removeprefix(LAW_PREFIX) in LAWS, f"unknown law {utility!r}"
        else:
            assert utility in UTILITIES, f"unknown utility {utility!r}"

    if "scope" in raw:
        assert raw["scope"] in SCOPES, f"unknown scope {raw['scope']!r}; known: {sorted(SCOPES)}"
        assert SCOPES[raw["scope"]].__doc__, f"scope {raw['scope']!r} has no docstring"

    re.compile(raw["match"])

    case = Case.from_blob(raw["replay"])
    assert case.utility in utilities, f"replay is a {case.utility} case, not one of {utilities}"
    if "scope" in raw:
        assert SCOPES[raw["scope"]](case), f"replay case is outside the scope {raw['scope']!r}"
    assert Case.from_blob(case.to_blob()) == case
