"""The pytest plugin acts only in a run that collects the suite; any other pytest run of the
environment (it is loaded in all of them) is left exactly as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import hypothesis._settings
import pytest
from hypothesis import settings

from conformance.plugin import names_suite
from tests.cli_helpers import ROOT

UNRELATED = textwrap.dedent(
    """
    import json
    import os
    import sys

    from hypothesis import given, settings, strategies as st


    def test_hypothesis_settings_are_untouched():
        assert settings.get_current_profile_name() == "default"
        assert settings.default.max_examples == 100
        assert settings.default.derandomize is False
        assert settings.default.deadline is not None
        assert settings.get_profile("ci").max_examples == 100  # Hypothesis' own ci profile
        with open(os.environ["SNAPSHOT"], "w") as out:  # compared with a run without the plugin
            theirs = {k: repr(v) for k, v in settings._profiles.items() if not k.startswith("sdc-")}
            json.dump([repr(settings.default), theirs], out)  # the plugin adds sdc-* profiles only


    def test_nothing_of_the_harness_is_loaded(pytestconfig):
        plugin = pytestconfig.pluginmanager.get_plugin("state_dict_conformance")
        assert (plugin is not None) == (os.environ["PLUGIN"] == "1")
        assert "conformance.harness" not in sys.modules
        assert "torch" not in sys.modules


    @given(st.integers())
    def test_draws_under_the_default_settings(n):
        assert isinstance(n, int)
    """
)

ALIASES = textwrap.dedent(
    """
    def test_options_take_the_prefixed_and_the_older_name(pytestconfig):
        assert pytestconfig.getoption("sdc_target") == "mine"  # given as --target
        assert pytestconfig.getoption("sdc_world_sizes") == "3"  # given as --sdc-world-sizes
    """
)


def _pytest(where: Path, *args: str, plugin: bool = True) -> str:
    """Output of a pytest run in ``where`` that loads this checkout's plugin (or none)."""
    env = {k: v for k, v in os.environ.items() if k not in getattr(hypothesis._settings, "_CI_VARS", ())}
    env.update(
        PYTHONPATH=str(ROOT),  # this checkout's plugin, loaded by the entry point
        PLUGIN="1" if plugin else "0",
        SNAPSHOT=str(where / ("with.json" if plugin else "without.json")),
        # suite settings in the environment (even a bad one) concern suite runs only
        SDC_PROFILE="ci",
        SDC_WORLD_SIZES="not-a-size",
    )
    off = [] if plugin else ["-p", "no:state_dict_conformance"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *off, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=where,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_a_run_without_the_suite_is_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "test_unrelated.py").write_text(UNRELATED)
    output = _pytest(tmp_path, "test_unrelated.py")
    assert "3 passed" in output, output
    mentions = [line for line in output.splitlines() if "state-dict-conformance" in line]
    assert [line.split(":")[0] for line in mentions] == ["plugins"], output  # no header, no summary
    assert "cases executed" not in output
    without = _pytest(tmp_path, "test_unrelated.py", plugin=False)
    assert "3 passed" in without, without
    assert (tmp_path / "with.json").read_text() == (tmp_path / "without.json").read_text()


def test_options_take_their_older_names_too(tmp_path: Path) -> None:
    (tmp_path / "test_aliases.py").write_text(ALIASES)
    assert "1 passed" in _pytest(tmp_path, "test_aliases.py", "--target", "mine", "--sdc-world-sizes", "3")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["conformance/suite/test_gather_state_dict.py::test_gather_state_dict"], True),
        (["conformance/suite"], True),
        (["conformance"], True),
        (["."], True),  # the project folder: tests and the suite
        (["tests", "conformance/suite"], True),
        (["tests"], False),
        (["tests/test_cli.py::test_list"], False),
        (["conformance/plugin.py"], False),
    ],
)
def test_runs_that_name_the_suite(args: list[str], named: bool) -> None:
    config = SimpleNamespace(
        args=args, option=SimpleNamespace(pyargs=False), invocation_params=SimpleNamespace(dir=ROOT)
    )
    assert names_suite(config) is named  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "named"), [(["conformance.suite"], True), (["tests.test_cli"], False)])
def test_runs_that_name_the_suite_by_module(args: list[str], named: bool, tmp_path: Path) -> None:
    config = SimpleNamespace(
        args=args, option=SimpleNamespace(pyargs=True), invocation_params=SimpleNamespace(dir=tmp_path)
    )
    assert names_suite(config) is named  # type: ignore[arg-type]


def test_profiles_are_registered_under_prefixed_names() -> None:
    assert settings.get_profile("sdc-dev").max_examples == 20
    assert settings.get_profile("sdc-ci").derandomize
    assert settings.get_profile("sdc-fuzz").max_examples == 2000
