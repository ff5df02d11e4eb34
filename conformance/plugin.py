"""pytest plugin: acts in a run that collects the suite (settings, Hypothesis profile, report
header and summary, the harness fixture), and in no other.

Loaded through the ``pytest11`` entry point, so it is present in every pytest run of an
environment where the project is installed. It acts only in a run that collects the suite
(``conformance/suite``: named on the command line, or reached while collecting); any other run
is left as it was: no settings read, no Hypothesis profile loaded, no header or summary lines,
no world started. Its options and profiles are in :mod:`conformance.suite_options`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from hypothesis import settings

from conformance.suite_options import OPTIONS, profile_name, read_config

if TYPE_CHECKING:  # the harness imports torch: only a run that collects the suite pays for it
    from conformance.harness import Harness, HarnessConfig


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "state-dict-conformance", "state-dict-conformance (acts when the suite is collected)"
    )
    for option in OPTIONS:
        group.addoption(*option.names, dest=option.dest, default=None, help=f"{option.help} [{option.env}]")


_CONFIG: pytest.StashKey[HarnessConfig] = pytest.StashKey()
_STATS = pytest.StashKey[dict]()


def is_active(config: pytest.Config) -> bool:
    """Whether this run collects the suite (and so the plugin acts in it)."""
    return _CONFIG in config.stash


def _is_suite_folder(path: Path) -> bool:
    return (
        path.name == "suite" and path.parent.name == "conformance" and (path.parent / "plugin.py").is_file()
    )


def in_suite(path: Path) -> bool:
    """Whether ``path`` lies in the suite's folder (``conformance/suite``)."""
    return any(_is_suite_folder(p) for p in (path, *path.parents))


def names_suite(config: pytest.Config) -> bool:
    """Whether the run's arguments (or testpaths) name the suite, a file in it, or the
    ``conformance`` or project folder that holds it."""
    for arg in config.args:
        target = arg.split("::")[0]
        if config.option.pyargs and not (config.invocation_params.dir / target).exists():
            if target == "conformance" or target.startswith("conformance.suite"):
                return True
            continue
        path = (config.invocation_params.dir / target).resolve()
        if (
            in_suite(path)
            or _is_suite_folder(path / "suite")
            or _is_suite_folder(path / "conformance" / "suite")
        ):
            return True
    return False


def activate(config: pytest.Config) -> None:
    """Read the suite's settings, load its Hypothesis profile (before the suite's modules are
    imported: ``@given`` takes the default settings when it decorates) and start counting."""
    from conformance.harness import set_active_config

    if is_active(config):
        return
    sdc = read_config(config)
    config.stash[_CONFIG] = sdc
    set_active_config(sdc)
    name = profile_name(sdc.profile)
    if sdc.max_examples:
        base, name = name, f"{name}-max-examples-{sdc.max_examples}"
        settings.register_profile(name, settings.get_profile(base), max_examples=sdc.max_examples)
    settings.load_profile(name)
    config.stash[_STATS] = _empty_stats()


def _empty_stats() -> dict:
    return {"cases": 0, "seconds": 0.0, "excused": {}, "by_utility": {}, "shared": {}}


def pytest_configure(config: pytest.Config) -> None:
    if names_suite(config):
        activate(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> None:
    """A suite module reached without being named (``pytest`` on a folder above the project):
    the plugin starts acting before the module is imported (no header then)."""
    if not is_active(parent.config) and file_path.suffix == ".py" and in_suite(file_path.parent):
        activate(parent.config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The harness's header lines and the seed the draws come from."""
    if not is_active(config):
        return []
    return [*config.stash[_CONFIG].header_lines(), f"  seed: {seed_text(config)}"]


def seed_text(config: pytest.Config) -> str:
    """``--hypothesis-seed`` when given; else derandomized (ci profile) or random."""
    seed = config.getoption("hypothesis_seed", default=None)
    if seed is not None:
        return str(seed)
    if config.stash[_CONFIG].profile == "ci":
        return "derandomized (profile ci: the same cases every run)"
    return "random (fix it with --hypothesis-seed N)"


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The session's conformance harness: target, known divergences and worlds."""
    from conformance.harness import Harness

    activate(request.config)  # a test outside the suite that asks for the harness uses the suite
    try:
        h = Harness(request.config.stash[_CONFIG])
    except Exception as exc:
        pytest.exit(f"state-dict-conformance: {exc}", returncode=2)
    start = time.perf_counter()
    yield h
    seconds = time.perf_counter() - start
    _merge(
        request.config.stash[_STATS],
        {
            "cases": h.cases_run,
            "seconds": seconds,
            "excused": h.divergences.hits,
            "by_utility": h.cases_by_utility,
            "shared": h.shared_by_utility,
        },
    )
    h.close()


def _merge(stats: dict, more: dict) -> None:
    stats["cases"] += more["cases"]
    stats["seconds"] = max(stats["seconds"], more["seconds"])  # workers run side by side
    for name in ("excused", "by_utility", "shared"):
        for key, count in more[name].items():
            stats[name][key] = stats[name].get(key, 0) + count


def run_stats(config: pytest.Config) -> dict:
    """Cases executed (in all and by utility), seconds, and divergence hits of this run
    (none when the run did not collect the suite)."""
    return config.stash.get(_STATS, _empty_stats())


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not is_active(session.config):
        return
    stats = session.config.stash[_STATS]
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the figures to the controller
        workeroutput["sdc_stats"] = stats
        return
    # the run's one throughput figure, computed here once (all workers merged) and reused
    stats["cases_per_second"] = round(stats["cases"] / stats["seconds"], 1) if stats["seconds"] else 0.0
    stats["seconds"] = round(stats["seconds"], 2)


def summary_line(stats: dict) -> str:
    """The run's one summary line: ``N cases executed in S s (R cases/s)`` from run_stats."""
    return (
        f"{stats['cases']} cases executed in {stats['seconds']:.1f}s "
        f"({stats.get('cases_per_second', 0.0):.1f} cases/s)"
    )


#: Set by a caller (the ``run`` command) that prints the summary line itself, after its table.
SUMMARY_ELSEWHERE = pytest.StashKey[bool]()


@pytest.hookimpl(optionalhook=True)  # an xdist hook (on the controller): a run without xdist lacks it
def pytest_testnodedown(node, error) -> None:
    theirs = getattr(node, "workeroutput", {}).get("sdc_stats")
    if theirs and is_active(node.config):
        _merge(node.config.stash[_STATS], theirs)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if not is_active(config):
        return
    stats = config.stash[_STATS]
    if not stats["cases"]:
        return
    target = config.stash[_CONFIG].target
    lines = [] if config.stash.get(SUMMARY_ELSEWHERE, False) else [f"{summary_line(stats)}, target {target}"]
    lines += [
        f"known divergence {key}: excused {n} difference(s)" for key, n in sorted(stats["excused"].items())
    ]
    lines += [f"known divergence {e.id}: matched nothing in this run" for e in unmatched_entries(config)]
    lines += shared_lines(config.stash[_CONFIG].baseline, stats)
    if lines:
        terminalreporter.write_sep("-", "state-dict-conformance")
        for line in lines:
            terminalreporter.write_line(line)


def shared_lines(baseline: str | None, stats: dict) -> list[str]:
    """Per utility, the cases whose contract differences the baseline shares (not failures)."""
    return [
        f"shared with the baseline {baseline}: {utility}: {count} case(s) differ from the contract as {baseline} does"
        for utility, count in sorted(stats.get("shared", {}).items())
    ]


def unmatched_entries(config: pytest.Config) -> list:
    """Active entries about a utility this run exercised that excused no difference."""
    from conformance.divergences import load_divergences

    if not is_active(config):
        return []
    stats = config.stash[_STATS]
    ran = set(stats["by_utility"])
    entries = load_divergences(config.stash[_CONFIG].expected_name).entries
    return [e for e in entries if ran & set(e.utilities) and not stats["excused"].get(e.id)]


def item_utilities(item: pytest.Item) -> tuple[str, ...]:
    """The utilities a suite item exercises: its module's utility, its law's, or its divergence's."""
    from conformance.laws import LAW_PREFIX, LAWS

    callspec = getattr(item, "callspec", None)
    divergence = callspec.params.get("divergence") if callspec else None
    if divergence is not None and hasattr(divergence, "utilities"):  # empty parameter set: NOTSET
        names = divergence.utilities
    else:
        function = _as_function(item)
        module = function.module.__name__.rsplit(".", 1)[-1] if function.module else ""
        names = (getattr(function.function, "utility", None) or module.removeprefix("test_"),)
    return tuple(n for name in names for n in LAWS.get(name.removeprefix(LAW_PREFIX), (name,)))


def _as_function(item: pytest.Item) -> pytest.Function:
    """``item`` as the python test function it is: items here come from test modules, and
    ``.module`` / ``.function`` are read from them unguarded."""
    return cast(pytest.Function, item)


def is_suite_item(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)  # items of other kinds (doctests, ...) have none
    return module is not None and module.__name__.startswith("conformance.suite")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Past the run's time limit, suite properties are skipped (reported as not run)."""
    if not is_suite_item(item):
        return
    from conformance.harness import out_of_time
    from conformance.properties import TIME_LIMIT_REACHED

    if out_of_time():
        pytest.skip(TIME_LIMIT_REACHED)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not is_active(config):
        return
    only = set(config.stash[_CONFIG].only)
    if not only:
        return
    keep = [i for i in items if not is_suite_item(i) or set(item_utilities(i)) <= only]
    drop = [i for i in items if i not in keep]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outermost: runs after Hypothesis' wrapper
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A suite failure of a case reads as our message (with Hypothesis' reproduction hint
    only under ``-v``) and carries each failed case's report data as ``report.sdc_failures``
    and its replay command as the user property ``replay``."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if call.excinfo is None or not is_suite_item(item):
        return
    failures = list(_case_failures(call.excinfo.value))
    if not failures:
        return
    report.sdc_failures = [f.details for f in failures if f.details]  # type: ignore[attr-defined]
    for details in report.sdc_failures:  # type: ignore[attr-defined]
        report.user_properties.append(("replay", details["replay"]))
        item.user_properties.append(("replay", details["replay"]))  # for the teardown report (JUnit)
    if report.failed and len(failures) == _leaf_count(call.excinfo.value):
        verbose = item.config.get_verbosity() > 0
        report.longrepr = "\n\n".join(_failure_text(f, verbose) for f in failures)
        if not verbose:
            report.sections = [s for s in report.sections if s[0] != "Hypothesis"]


def _case_failures(exc: BaseException) -> Iterator[BaseException]:
    """The CaseFailure / CaseAborted exceptions in ``exc`` (an exception group's included)."""
    from conformance.check import CaseAborted, CaseFailure

    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _case_failures(inner)
    elif isinstance(exc, (CaseFailure, CaseAborted)):
        yield exc


def _leaf_count(exc: BaseException) -> int:
    if isinstance(exc, BaseExceptionGroup):
        return sum(_leaf_count(inner) for inner in exc.exceptions)
    return 1


#: Hypothesis' notes worth keeping under -v: how to reproduce its failing example.
_HYPOTHESIS_HINTS = ("@reproduce_failure(", "@seed(", "--hypothesis-seed")


def _failure_text(exc: BaseException, verbose: bool) -> str:
    """Our message for a failed case; under ``verbose`` Hypothesis' reproduction hints too."""
    text = str(exc.args[0]) if exc.args else str(exc)
    if verbose:
        text += "".join(
            f"\n{note.strip()}"
            for note in getattr(exc, "__notes__", [])
            if any(hint in note for hint in _HYPOTHESIS_HINTS)
        )
    return text
