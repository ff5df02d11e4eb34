"""A derandomized run draws the same cases whatever else the repository holds or imports."""

from __future__ import annotations

import importlib

from hypothesis import Phase, given, settings

from strategies import state_dict_specs

LITERALS = "\n".join(
    [f"S{i} = {('_a.b' * (i % 5 + 1))[: i % 7 + 1]!r}" for i in range(200)]
    + [f"N{i} = {i * 7919 % 1000 - 500}" for i in range(200)]
    + [f"F{i} = {i / 7 - 3.5!r}" for i in range(100)]
)


def _draws() -> list:
    drawn: list = []

    @settings(max_examples=150, derandomize=True, database=None, phases=[Phase.generate], deadline=None)
    @given(state_dict_specs(4, allow_unsupported=True))
    def run(tree) -> None:
        drawn.append(tree)

    run()
    return drawn


def test_draws_do_not_change_when_a_local_module_with_new_literals_is_imported(tmp_path, monkeypatch):
    before = _draws()
    (tmp_path / "sdc_many_literals.py").write_text(LITERALS + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("sdc_many_literals")
    after = _draws()
    assert after == before


def test_the_derandomized_draws_are_the_recorded_ones() -> None:
    """The ci profile's cases are the ones the known divergences of torch were recorded on:
    a change to any case strategy that changes a draw must re-run the torch suite, record
    what torch does there, and then re-record this fingerprint (benchmarks/draw_fingerprint.py)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "draw_fingerprint.py"
    done = subprocess.run(
        [sys.executable, str(script), "--expect", RECORDED_DRAWS], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


#: benchmarks/draw_fingerprint.py's total over every utility and law, 40 draws at world sizes 2,4 and 2.
RECORDED_DRAWS = "ee351f3f07c81720"
