"""The shipped known-divergence file of the ``torch`` target is well formed (no world needed).

The loader checks keys, utilities, fields, patterns, scopes and version ranges; here every
entry must also have a one-line reason, scopes with docstrings, a replay blob that decodes to
a Case of one of the entry's utilities, and a planted-bug test (checked in tests/test_planted_bugs.py).
"""

from __future__ import annotations

import tomllib

import pytest

from conformance.case import Case
from conformance.divergences import SHIPPED, load_divergences
from conformance.scopes import SCOPES

TORCH_FILE = SHIPPED / "torch.toml"
RAW = tomllib.loads(TORCH_FILE.read_text()).get("divergence", []) if TORCH_FILE.exists() else []
ALL = load_divergences("torch")
ENTRIES = [*ALL.entries, *ALL.inactive]


def test_file_loads_with_every_entry():
    assert ALL.entries, "torch.toml has no active entries"
    assert len(ENTRIES) == len(RAW)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_entry_is_well_formed(entry):
    assert entry.reason.strip() and "\n" not in entry.reason, "reason must be one line"
    assert entry.torch is not None, "every entry names the torch releases it holds for"
    for name in entry.scopes:
        assert SCOPES[name].__doc__, f"scope {name!r} has no docstring"
    case = Case.from_blob(entry.replay)
    assert case.utility in entry.utilities, f"replay is a {case.utility} case, not one of {entry.utilities}"
    assert Case.from_blob(case.to_blob()) == case
