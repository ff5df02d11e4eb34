"""pytest plugin: target and world options, Hypothesis profiles, report header and summary.

Loaded through the ``pytest11`` entry point. Settings come from options or environment
variables (option wins): ``--target`` / ``SDC_TARGET`` (default ``impl``), ``--expected`` /
``SDC_EXPECTED`` (known-divergence file; default: the shipped one named like the target, if
any), ``--world-sizes`` / ``SDC_WORLD_SIZES`` (``2``), ``--backend`` / ``SDC_BACKEND``
(``gloo``), ``--case-timeout`` / ``SDC_CASE_TIMEOUT`` (30 s), ``--sdc-profile`` /
``SDC_PROFILE`` (``dev``), ``--max-examples`` / ``SDC_MAX_EXAMPLES``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from conformance.harness import Harness, HarnessConfig, set_active_config
from conformance.world import MAX_WORLD_SIZE

PROFILES = ("dev", "ci", "fuzz")
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=_SUPPRESSED)
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "fuzz", max_examples=2000, deadline=None, suppress_health_check=_SUPPRESSED
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("state-dict-conformance")
    group.addoption(
        "--target",
        default=None,
        help="module under test: impl, torch or a module path [SDC_TARGET]",
    )
    group.addoption(
        "--expected",
        default=None,
        help="known-divergence file: a path, a shipped name, or none [SDC_EXPECTED]",
    )
    group.addoption(
        "--world-sizes",
        default=None,
        help="comma-separated world sizes, e.g. 2,4 [SDC_WORLD_SIZES]",
    )
    group.addoption(
        "--backend",
        default=None,
        choices=["gloo", "nccl"],
        help="process-group backend [SDC_BACKEND]",
    )
    group.addoption(
        "--case-timeout",
        default=None,
        type=float,
        help="seconds before a case counts as a hang [SDC_CASE_TIMEOUT]",
    )
    group.addoption(
        "--sdc-profile", default=None, choices=PROFILES, help="Hypothesis profile [SDC_PROFILE]"
    )
    group.addoption(
        "--max-examples",
        default=None,
        type=int,
        help="override the profile's examples per property [SDC_MAX_EXAMPLES]",
    )


def _setting(config: pytest.Config, name: str, env: str, default: str | None) -> str | None:
    value = config.getoption(name)
    return str(value) if value is not None else os.environ.get(env, default)


def read_config(config: pytest.Config) -> HarnessConfig:
    """The suite's settings; raises pytest.UsageError with one line for bad values."""
    target = _setting(config, "target", "SDC_TARGET", "impl") or "impl"
    sizes_text = _setting(config, "world_sizes", "SDC_WORLD_SIZES", "2") or "2"
    try:
        sizes = tuple(int(s) for s in sizes_text.split(","))
    except ValueError:
        raise pytest.UsageError(
            f"--world-sizes must be integers separated by commas, got {sizes_text!r}"
        ) from None
    if any(not 1 <= s <= MAX_WORLD_SIZE for s in sizes):
        raise pytest.UsageError(
            f"--world-sizes must lie between 1 and {MAX_WORLD_SIZE}, got {sizes_text!r}"
        )
    timeout = float(_setting(config, "case_timeout", "SDC_CASE_TIMEOUT", "30") or 30)
    if timeout <= 0:
        raise pytest.UsageError(f"--case-timeout must be positive, got {timeout:g}")
    profile = _setting(config, "sdc_profile", "SDC_PROFILE", "dev") or "dev"
    if profile not in PROFILES:
        raise pytest.UsageError(
            f"SDC_PROFILE must be one of {', '.join(PROFILES)}, got {profile!r}"
        )
    max_examples = _setting(config, "max_examples", "SDC_MAX_EXAMPLES", None)
    return HarnessConfig(
        target=target,
        expected=_setting(config, "expected", "SDC_EXPECTED", None),
        world_sizes=sizes,
        backend=_setting(config, "backend", "SDC_BACKEND", "gloo") or "gloo",
        case_timeout=timeout,
        profile=profile,
        max_examples=int(max_examples) if max_examples else None,
    )


def pytest_configure(config: pytest.Config) -> None:
    sdc = read_config(config)
    config.stash[_CONFIG] = sdc
    set_active_config(sdc)
    overrides = {"max_examples": sdc.max_examples} if sdc.max_examples else {}
    settings.register_profile(f"sdc-{sdc.profile}", settings.get_profile(sdc.profile), **overrides)
    settings.load_profile(f"sdc-{sdc.profile}")
    config.stash[_STATS] = {"cases": 0, "seconds": 0.0, "excused": {}}


_CONFIG = pytest.StashKey[HarnessConfig]()
_STATS = pytest.StashKey[dict]()
_HARNESS = pytest.StashKey[Harness]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    sdc = config.stash[_CONFIG]
    return sdc.header_lines()


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The session's conformance harness: target, known divergences and worlds."""
    sdc = request.config.stash[_CONFIG]
    try:
        h = Harness(sdc)
    except Exception as exc:
        pytest.exit(f"state-dict-conformance: {exc}", returncode=2)
    request.config.stash[_HARNESS] = h
    start = time.perf_counter()
    yield h
    stats = request.config.stash[_STATS]
    stats["cases"] += h.cases_run
    stats["seconds"] += time.perf_counter() - start
    for key, count in h.divergences.hits.items():
        stats["excused"][key] = stats["excused"].get(key, 0) + count
    h.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the figures to the controller
        workeroutput["sdc_stats"] = session.config.stash[_STATS]


def pytest_testnodedown(node, error) -> None:  # xdist hook, on the controller
    stats = node.config.stash[_STATS]
    theirs = getattr(node, "workeroutput", {}).get("sdc_stats")
    if theirs:
        stats["cases"] += theirs["cases"]
        stats["seconds"] = max(stats["seconds"], theirs["seconds"])
        for key, count in theirs["excused"].items():
            stats["excused"][key] = stats["excused"].get(key, 0) + count


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    stats = config.stash[_STATS]
    if not stats["cases"]:
        return
    rate = stats["cases"] / stats["seconds"] if stats["seconds"] else 0.0
    terminalreporter.write_sep("-", "state-dict-conformance")
    terminalreporter.write_line(
        f"{stats['cases']} cases executed in {stats['seconds']:.1f}s ({rate:.1f} cases/s per worker, "
        f"target {config.stash[_CONFIG].target})"
    )
    for key, count in sorted(stats["excused"].items()):
        terminalreporter.write_line(f"known divergence {key}: excused {count} difference(s)")
