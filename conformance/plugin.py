"""pytest plugin: target and world options, Hypothesis profiles, report header and summary.

Loaded through the ``pytest11`` entry point. Settings come from options or environment
variables (option wins): ``--target`` / ``SDC_TARGET`` (default ``impl``), ``--expected`` /
``SDC_EXPECTED`` (known-divergence file; default: the shipped one named like the target, if
any), ``--world-sizes`` / ``SDC_WORLD_SIZES`` (``2,4``), ``--backend`` / ``SDC_BACKEND``
(``gloo``), ``--case-timeout`` / ``SDC_CASE_TIMEOUT`` (30 s), ``--sdc-profile`` /
``SDC_PROFILE`` (``dev``), ``--max-examples`` / ``SDC_MAX_EXAMPLES``, ``--placement`` /
``SDC_PLACEMENTS`` (user placement models), ``--only`` / ``SDC_ONLY`` (utilities),
``--sdc-strict`` / ``SDC_STRICT`` (stale known divergences fail the run), ``--shrink-hangs``
/ ``SDC_SHRINK_HANGS``, ``--time-limit`` / ``SDC_TIME_LIMIT`` (seconds for the whole run),
``--sdc-baseline`` / ``SDC_BASELINE`` (every case also runs on this target; see ``check_against_baseline``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TypedDict, cast

import pytest
from hypothesis import HealthCheck, Phase, settings

from conformance.harness import Harness, HarnessConfig, set_active_config
from conformance.targets import UTILITIES
from conformance.world import max_world_size

PROFILES = ("dev", "ci", "fuzz")


class _CommonSettings(TypedDict):
    """The Hypothesis settings every profile shares (keys are ``settings`` keyword names)."""

    deadline: None
    suppress_health_check: list[HealthCheck]
    phases: list[Phase]


_COMMON: _CommonSettings = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    # the failure message carries a replay command; Hypothesis' line explanations add noise
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
}
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("fuzz", max_examples=2000, **_COMMON)

_OPTIONS = [
    # (option, dest, env, help)
    ("--target", "target", "SDC_TARGET", "module under test: impl, torch or a module path"),
    ("--expected", "expected", "SDC_EXPECTED", "known-divergence file: a path, a shipped name, or none"),
    ("--world-sizes", "world_sizes", "SDC_WORLD_SIZES", "comma-separated world sizes, e.g. 2,4"),
    ("--backend", "backend", "SDC_BACKEND", "process-group backend: gloo or nccl"),
    ("--case-timeout", "case_timeout", "SDC_CASE_TIMEOUT", "seconds before a case counts as a hang"),
    ("--sdc-profile", "sdc_profile", "SDC_PROFILE", "Hypothesis profile: dev, ci or fuzz"),
    ("--max-examples", "max_examples", "SDC_MAX_EXAMPLES", "override the profile's examples per property"),
    ("--placement", "placement", "SDC_PLACEMENTS", "user placement models module:Model, comma-separated"),
    ("--only", "only", "SDC_ONLY", "comma-separated utilities to test (and the laws among them)"),
    (
        "--sdc-strict",
        "sdc_strict",
        "SDC_STRICT",
        "known divergences that no longer reproduce fail the run (1)",
    ),
    ("--shrink-hangs", "shrink_hangs", "SDC_SHRINK_HANGS", "shrink hangs and dead ranks too (1; slow)"),
    (
        "--time-limit",
        "time_limit",
        "SDC_TIME_LIMIT",
        "seconds for the whole run; later properties are not run",
    ),
    (
        "--sdc-baseline",
        "sdc_baseline",
        "SDC_BASELINE",
        "also run every case on this target and report changes",
    ),
    (
        "--sdc-launcher",
        "sdc_launcher",
        "SDC_LAUNCHER",
        "world transport: spawn, or torchrun (set by conformance.torchrun)",
    ),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("state-dict-conformance")
    for option, dest, env, text in _OPTIONS:
        group.addoption(option, dest=dest, default=None, help=f"{text} [{env}]")


def _setting(config: pytest.Config, dest: str, default: str) -> str:
    env = next(e for _, d, e, _ in _OPTIONS if d == dest)
    value = config.getoption(dest)
    return str(value) if value is not None else os.environ.get(env, default)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def read_config(config: pytest.Config) -> HarnessConfig:
    """The suite's settings; raises pytest.UsageError with one line for bad values."""
    sizes_text = _setting(config, "world_sizes", "2,4")
    try:
        sizes = tuple(int(s) for s in _names(sizes_text))
    except ValueError:
        raise pytest.UsageError(
            f"--world-sizes must be integers separated by commas, got {sizes_text!r}"
        ) from None
    if not sizes or any(not 1 <= s <= max_world_size() for s in sizes):
        raise pytest.UsageError(
            f"--world-sizes must lie between 1 and {max_world_size()}, got {sizes_text!r}"
        )
    backend = _setting(config, "backend", "gloo")
    if backend not in ("gloo", "nccl"):
        raise pytest.UsageError(f"--backend must be gloo or nccl, got {backend!r}")
    try:
        timeout = float(_setting(config, "case_timeout", "30"))
        max_examples = int(_setting(config, "max_examples", "0")) or None
        time_limit = float(_setting(config, "time_limit", "0")) or None
    except ValueError as exc:
        raise pytest.UsageError(
            f"--case-timeout, --max-examples and --time-limit take numbers ({exc})"
        ) from None
    if timeout <= 0:
        raise pytest.UsageError(f"--case-timeout must be positive, got {timeout:g}")
    if (max_examples or 0) < 0 or (time_limit or 0) < 0:
        raise pytest.UsageError("--max-examples and --time-limit must not be negative")
    profile = _setting(config, "sdc_profile", "dev")
    if profile not in PROFILES:
        raise pytest.UsageError(
            f"the Hypothesis profile must be one of {', '.join(PROFILES)}, got {profile!r}"
        )
    only = _names(_setting(config, "only", ""))
    unknown = [u for u in only if u not in UTILITIES]
    if unknown:
        raise pytest.UsageError(f"--only: unknown utility {unknown[0]!r}; known: {', '.join(UTILITIES)}")
    expected = config.getoption("expected") or os.environ.get("SDC_EXPECTED")
    return HarnessConfig(
        target=_setting(config, "target", "impl"),
        expected=expected,
        world_sizes=sizes,
        backend=backend,
        case_timeout=timeout,
        profile=profile,
        max_examples=max_examples,
        placements=_names(_setting(config, "placement", "")),
        only=only,
        strict=_flag(_setting(config, "sdc_strict", "0")),
        shrink_hangs=_flag(_setting(config, "shrink_hangs", "0")),
        time_limit=time_limit,
        baseline=_setting(config, "sdc_baseline", "") or None,
        launcher=_setting(config, "sdc_launcher", "spawn"),
    )


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("", "0", "false", "no")


_CONFIG = pytest.StashKey[HarnessConfig]()
_STATS = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    sdc = read_config(config)
    config.stash[_CONFIG] = sdc
    set_active_config(sdc)
    overrides = {"max_examples": sdc.max_examples} if sdc.max_examples else {}
    settings.register_profile(f"sdc-{sdc.profile}", settings.get_profile(sdc.profile), **overrides)
    settings.load_profile(f"sdc-{sdc.profile}")
    config.stash[_STATS] = {"cases": 0, "seconds": 0.0, "excused": {}, "by_utility": {}, "shared": {}}


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The harness's header lines and the seed the draws come from."""
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
    """Cases executed (in all and by utility), seconds, and divergence hits of this run."""
    return config.stash[_STATS]


def pytest_sessionfinish(session: pytest.Session) -> None:
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


def pytest_testnodedown(node, error) -> None:  # xdist hook, on the controller
    theirs = getattr(node, "workeroutput", {}).get("sdc_stats")
    if theirs:
        _merge(node.config.stash[_STATS], theirs)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
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
    module = _as_function(item).module
    return module is not None and module.__name__.startswith("conformance.suite")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Past the run's time limit, suite properties are skipped (reported as not run)."""
    from conformance.harness import out_of_time
    from conformance.properties import TIME_LIMIT_REACHED

    if is_suite_item(item) and out_of_time():
        pytest.skip(TIME_LIMIT_REACHED)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
