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
RECORDED_DRAWS = "bec513d118e13f93"


def _property(tmp_path, name: str, body: str):
    """A suite-like property ``prop`` from its own module file (inspect needs the source)."""
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(f"def prop(harness, case):\n{body}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prop


def test_a_docstring_does_not_change_a_propertys_seed_but_its_body_does(tmp_path) -> None:
    from hypothesis.internal.reflection import function_digest

    from strategies.stable import docstring_free_seed

    plain = _property(tmp_path, "plain", "    assert_conforms(harness, case)\n")
    documented = _property(
        tmp_path, "documented", '    """CONTRACT rule 1: documented."""\n    assert_conforms(harness, case)\n'
    )
    changed = _property(tmp_path, "changed", "    assert_conforms(harness, case, 1)\n")
    hypothesis_seed = int.from_bytes(function_digest(plain), "big")  # what derandomize draws from
    assert docstring_free_seed(plain) == docstring_free_seed(documented) == hypothesis_seed
    assert int.from_bytes(function_digest(documented), "big") != hypothesis_seed  # Hypothesis' own
    assert docstring_free_seed(changed) != hypothesis_seed
