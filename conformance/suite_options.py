"""The suite's settings under pytest: its options (each also under its older name without
the ``sdc-`` prefix), their environment variables, and its Hypothesis profiles.

Settings come from options or environment variables (option wins):
``--sdc-target`` / ``SDC_TARGET`` (default ``impl``), ``--sdc-expected`` / ``SDC_EXPECTED``
(known-divergence file; default: the shipped one named like the target, if any),
``--sdc-world-sizes`` / ``SDC_WORLD_SIZES`` (``2,4``), ``--sdc-backend`` / ``SDC_BACKEND``
(``gloo``), ``--sdc-case-timeout`` / ``SDC_CASE_TIMEOUT`` (30 s), ``--sdc-profile`` /
``SDC_PROFILE`` (``dev``, ``ci`` or ``fuzz``), ``--sdc-max-examples`` / ``SDC_MAX_EXAMPLES``,
``--sdc-placement`` / ``SDC_PLACEMENTS`` (user placement models), ``--sdc-only`` / ``SDC_ONLY``
(utilities), ``--sdc-strict`` / ``SDC_STRICT`` (stale known divergences fail the run),
``--sdc-shrink-hangs`` / ``SDC_SHRINK_HANGS``, ``--sdc-time-limit`` / ``SDC_TIME_LIMIT``
(seconds for the whole run), ``--sdc-baseline`` / ``SDC_BASELINE`` (every case also runs on
this target; see ``start_case``). Older names: ``--target``, ``--expected``,
``--world-sizes``, ``--backend``, ``--case-timeout``, ``--max-examples``, ``--placement``,
``--only``, ``--shrink-hangs``, ``--time-limit``.

The profiles are registered with Hypothesis as ``sdc-dev``, ``sdc-ci`` and ``sdc-fuzz`` (users
still write ``--sdc-profile ci``), so a user's own ``ci`` profile is never replaced;
registering loads none of them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple, TypedDict

import pytest
from hypothesis import HealthCheck, Phase, settings

if TYPE_CHECKING:  # the harness imports torch: only a run that collects the suite pays for it
    from conformance.harness import HarnessConfig

#: The profiles as users name them (``--sdc-profile ci``); registered with Hypothesis as
#: ``profile_name(p)``.
PROFILES = ("dev", "ci", "fuzz")


def profile_name(profile: str) -> str:
    """The name Hypothesis knows the suite's profile ``profile`` by: ``sdc-ci`` for ``ci``."""
    return f"sdc-{profile}"


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
# Registering only names them; a profile is loaded when a run collects the suite.
settings.register_profile(profile_name("dev"), max_examples=20, **_COMMON)
settings.register_profile(profile_name("ci"), max_examples=40, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile(profile_name("fuzz"), max_examples=2000, **_COMMON)


class Option(NamedTuple):
    """A suite option ``--sdc-<key>``: its environment variable, its help, and whether it also
    takes its older name without the prefix (``--<key>``)."""

    key: str
    env: str
    help: str
    aliased: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return (f"--sdc-{self.key}", f"--{self.key}") if self.aliased else (f"--sdc-{self.key}",)

    @property
    def dest(self) -> str:
        return "sdc_" + self.key.replace("-", "_")


OPTIONS = (
    Option("target", "SDC_TARGET", "module under test: impl, torch or a module path"),
    Option("expected", "SDC_EXPECTED", "known-divergence file: a path, a shipped name, or none"),
    Option("world-sizes", "SDC_WORLD_SIZES", "comma-separated world sizes, e.g. 2,4"),
    Option("backend", "SDC_BACKEND", "process-group backend: gloo or nccl"),
    Option("case-timeout", "SDC_CASE_TIMEOUT", "seconds before a case counts as a hang"),
    Option("profile", "SDC_PROFILE", "Hypothesis profile: dev, ci or fuzz", aliased=False),
    Option("max-examples", "SDC_MAX_EXAMPLES", "override the profile's examples per property"),
    Option("placement", "SDC_PLACEMENTS", "user placement models module:Model, comma-separated"),
    Option("only", "SDC_ONLY", "comma-separated utilities to test (and the laws among them)"),
    Option(
        "strict", "SDC_STRICT", "known divergences that no longer reproduce fail the run (1)", aliased=False
    ),
    Option("shrink-hangs", "SDC_SHRINK_HANGS", "shrink hangs and dead ranks too (1; slow)"),
    Option("time-limit", "SDC_TIME_LIMIT", "seconds for the whole run; later properties are not run"),
    Option(
        "baseline", "SDC_BASELINE", "also run every case on this target and report changes", aliased=False
    ),
    Option(
        "launcher",
        "SDC_LAUNCHER",
        "world transport: spawn, or torchrun (set by conformance.torchrun)",
        aliased=False,
    ),
)
_BY_KEY = {option.key: option for option in OPTIONS}


def _setting(config: pytest.Config, key: str, default: str) -> str:
    option = _BY_KEY[key]
    value = config.getoption(option.dest)
    return str(value) if value is not None else os.environ.get(option.env, default)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def read_config(config: pytest.Config) -> HarnessConfig:
    """The suite's settings; raises pytest.UsageError with one line for bad values."""
    from conformance.harness import HarnessConfig
    from conformance.utilities import UTILITY_NAMES
    from conformance.world import max_world_size

    sizes_text = _setting(config, "world-sizes", "2,4")
    try:
        sizes = tuple(int(s) for s in _names(sizes_text))
    except ValueError:
        raise pytest.UsageError(
            f"--sdc-world-sizes must be integers separated by commas, got {sizes_text!r}"
        ) from None
    if not sizes or any(not 1 <= s <= max_world_size() for s in sizes):
        raise pytest.UsageError(
            f"--sdc-world-sizes must lie between 1 and {max_world_size()}, got {sizes_text!r}"
        )
    backend = _setting(config, "backend", "gloo")
    if backend not in ("gloo", "nccl"):
        raise pytest.UsageError(f"--sdc-backend must be gloo or nccl, got {backend!r}")
    try:
        timeout = float(_setting(config, "case-timeout", "30"))
        max_examples = int(_setting(config, "max-examples", "0")) or None
        time_limit = float(_setting(config, "time-limit", "0")) or None
    except ValueError as exc:
        raise pytest.UsageError(
            f"--sdc-case-timeout, --sdc-max-examples and --sdc-time-limit take numbers ({exc})"
        ) from None
    if timeout <= 0:
        raise pytest.UsageError(f"--sdc-case-timeout must be positive, got {timeout:g}")
    if (max_examples or 0) < 0 or (time_limit or 0) < 0:
        raise pytest.UsageError("--sdc-max-examples and --sdc-time-limit must not be negative")
    profile = _setting(config, "profile", "dev")
    if profile not in PROFILES:
        raise pytest.UsageError(
            f"the Hypothesis profile must be one of {', '.join(PROFILES)}, got {profile!r}"
        )
    only = _names(_setting(config, "only", ""))
    unknown = [u for u in only if u not in UTILITY_NAMES]
    if unknown:
        raise pytest.UsageError(
            f"--sdc-only: unknown utility {unknown[0]!r}; known: {', '.join(UTILITY_NAMES)}"
        )
    return HarnessConfig(
        target=_setting(config, "target", "impl"),
        expected=_setting(config, "expected", "") or None,
        world_sizes=sizes,
        backend=backend,
        case_timeout=timeout,
        profile=profile,
        max_examples=max_examples,
        placements=_names(_setting(config, "placement", "")),
        only=only,
        strict=_flag(_setting(config, "strict", "0")),
        shrink_hangs=_flag(_setting(config, "shrink-hangs", "0")),
        time_limit=time_limit,
        baseline=_setting(config, "baseline", "") or None,
        launcher=_setting(config, "launcher", "spawn"),
    )


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("", "0", "false", "no")
