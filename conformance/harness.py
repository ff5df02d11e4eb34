"""The harness a conformance run uses: settings, target, known divergences, worlds."""

from __future__ import annotations

import contextlib
import gc
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from conformance.case import Case
from conformance.check import (
    CaseAborted,
    CaseCheck,
    CaseReport,
    case_json,
    observe_case,
    start_case,
)
from conformance.divergences import SHIPPED, DivergenceFileError, Divergences, load_divergences
from conformance.laws import LAW_PREFIX, LAWS
from conformance.targets import Target, load_target
from conformance.world import LAUNCHERS, JobRunner, World, WorldUnavailable
from conformance.world.torchrun_main import launched_world


@dataclass(frozen=True)
class HarnessConfig:
    target: str = "impl"
    expected: str | None = None  # None: the shipped file named like the target, if any
    world_sizes: tuple[int, ...] = (2,)
    backend: str = "gloo"
    case_timeout: float = 30.0
    profile: str = "dev"
    max_examples: int | None = None
    placements: tuple[str, ...] = ()  # user placement models, "module:Model"
    only: tuple[str, ...] = ()  # restrict the suite to these utilities (and laws among them)
    strict: bool = False  # known divergences that no longer reproduce fail the run
    shrink_hangs: bool = False  # shrink hangs and dead ranks like other failures (slow: restarts)
    time_limit: float | None = None  # seconds for the whole run; later properties are not run
    baseline: str | None = None  # every case also runs on this target; the verdict is the changes
    launcher: str = "spawn"  # the worlds' transport: "spawn" (ranks spawned here) or "torchrun"

    @classmethod
    def from_args(cls, args: Any, **more: Any) -> HarnessConfig:
        """The settings of a command line (``run``, ``fuzz``): the suite options it has."""
        return cls(
            target=args.target,
            expected=args.expected,
            world_sizes=tuple(args.world_sizes),
            backend=args.backend,
            case_timeout=args.case_timeout,
            placements=tuple(args.placement),
            only=tuple(args.only),
            max_examples=args.max_examples,
            baseline=args.baseline,
            launcher=getattr(args, "launcher", "spawn"),
            **more,
        )

    @property
    def expected_name(self) -> str:
        if self.expected is not None:
            return self.expected
        return self.target if (SHIPPED / f"{self.target}.toml").exists() else "none"

    def header_lines(self) -> list[str]:
        import hypothesis
        import torch

        where = _target_line(self.target)
        try:
            missing = load_target(self.target).missing()
        except Exception:
            missing = []
        lines = [
            f"state-dict-conformance: target {self.target} = {where}",
            f"  torch {torch.__version__}, hypothesis {hypothesis.__version__}, python {platform.python_version()}",
            f"  world sizes {','.join(map(str, self.world_sizes))}, backend {self.backend}, "
            f"case timeout {self.case_timeout:g}s, profile {self.profile}"
            + (f", max examples {self.max_examples}" if self.max_examples else ""),
            f"  known divergences: {_divergences_line(self.expected_name)}",
        ]
        if self.baseline:
            lines.append(f"  baseline: {self.baseline} = {_target_line(self.baseline)}")
        if self.placements:
            lines.append(f"  user placements: {', '.join(self.placements)}")
        if self.only:
            lines.append(f"  only: {', '.join(self.only)}")
        if missing:
            lines.append(
                f"  target lacks: {', '.join(missing)} (failures unless the expected file declares them absent)"
            )
        return lines


def _target_line(name: str) -> str:
    try:
        target = load_target(name)
    except Exception as exc:
        return f"UNUSABLE: {exc}"
    return f"{target.module_path} ({target.file})"


def _divergences_line(name: str) -> str:
    try:
        return load_divergences(name).describe()
    except DivergenceFileError as exc:
        return f"UNUSABLE: {exc}"


def register_placements(references: tuple[str, ...]) -> None:
    """Load user placement models ("module:Model") into this process's registry."""
    from strategies.placements import load_placement

    for reference in references:
        load_placement(reference)


def warm_up(target_name: str) -> None:
    """World setup job: import the target and the DTensor / ShardedTensor machinery once, and
    build one DTensor (its first construction imports torch._dynamo lazily), before the first
    case: on a busy machine these take longer than a case may."""
    import torch
    import torch.distributed._shard.sharded_tensor
    from torch.distributed.tensor import DTensor, Replicate

    import conformance.runner  # noqa: F401
    from conformance.world import context

    load_target(target_name)
    ctx = context()
    mesh = ctx.mesh((ctx.world_size,))
    DTensor.from_local(torch.zeros(1, device=ctx.device), mesh, [Replicate()], run_check=False)
    leave_start_up_out_of_gc()


_start_up_frozen = False


def leave_start_up_out_of_gc() -> None:
    """Once per process, when start-up is over (torch and the target imported, a world up):
    collect, then ``gc.freeze()`` what survives, so that later collections leave those objects
    alone. A run allocates many short-lived objects (draws, cases, observations), and each
    full collection would otherwise walk everything torch created: freezing saves 12% of a
    gather draw's CPU here. What start-up left alive stays alive either way."""
    global _start_up_frozen
    if not _start_up_frozen:
        gc.collect()
        gc.freeze()
        _start_up_frozen = True


_active: HarnessConfig | None = None
_started = time.monotonic()


def set_active_config(config: HarnessConfig) -> None:
    """The settings of this run; its time limit counts from now."""
    global _active, _started
    _active, _started = config, time.monotonic()


def out_of_time() -> bool:
    """Whether the run's ``time_limit`` (if any) has passed."""
    limit = active_config().time_limit
    return limit is not None and time.monotonic() - _started >= limit


def active_config() -> HarnessConfig:
    """The settings of the running suite (defaults outside pytest)."""
    return _active or HarnessConfig()


def _lacks(target: Target, utility: str) -> list[str]:
    needed = LAWS.get(utility.removeprefix(LAW_PREFIX), (utility,))
    return sorted({u for u in needed if target.function(u) is None})


class Harness:
    """Runs cases of one target on cached worlds and judges them against the oracle."""

    def __init__(self, config: HarnessConfig) -> None:
        self.config = config
        self.target: Target = load_target(config.target)
        self.divergences: Divergences = load_divergences(config.expected_name)
        register_placements(config.placements)
        self._worlds: dict[int, World] = {}
        self.cases_by_utility: dict[str, int] = {}
        self.faults: dict[str, str] = {}  # utility -> its first hang or dead rank in this run
        self.baseline: Target | None = load_target(config.baseline) if config.baseline else None
        self.shared_by_utility: dict[str, int] = {}  # cases with differences the baseline shares
        self.look_ahead: Any = None  # the look-ahead pass running, if any (conformance.look_ahead)

    def world(self, size: int) -> JobRunner:
        """The world of ``size`` ranks for this run's launcher: a cached spawned world, or the
        one torchrun world (checked against ``size`` and the backend)."""
        if self.config.launcher == "torchrun":
            world: JobRunner = launched_world(
                size, self.config.backend, self.config.case_timeout, self.setup_jobs()
            )
        elif self.config.launcher != "spawn":
            raise WorldUnavailable(
                f"launcher must be one of {', '.join(LAUNCHERS)}, got {self.config.launcher!r}"
            )
        elif size in self._worlds:
            return self._worlds[size]
        else:
            world = World(
                size, self.config.backend, job_timeout=self.config.case_timeout, setup=self.setup_jobs()
            )
            world.start()
            self._worlds[size] = world
        leave_start_up_out_of_gc()
        return world

    def setup_jobs(self) -> tuple[tuple[Any, tuple[Any, ...]], ...]:
        """Jobs every new world runs before its first case: importing the target and the
        DTensor machinery (so that a first case on a loaded machine is not slow enough to look
        hung), then registering user placements."""
        jobs: list[tuple[Any, tuple[Any, ...]]] = [(warm_up, (self.config.target,))]
        if self.config.baseline:
            jobs.append((warm_up, (self.config.baseline,)))
        if self.config.placements:
            jobs.append((register_placements, (self.config.placements,)))
        return tuple(jobs)

    def close(self, polite: bool = True) -> None:
        """Stop the worlds (at once, killing their ranks, unless ``polite``)."""
        for world in self._worlds.values():
            world.close(polite)
        self._worlds.clear()

    def missing(self, utility: str) -> list[str]:
        """The utilities ``utility`` (or the law) needs that the target lacks."""
        return _lacks(self.target, utility)

    def baseline_lacks(self, utility: str) -> list[str]:
        """The utilities ``utility`` (or the law) needs that the baseline lacks (its cases
        are then judged against the contract alone)."""
        return _lacks(self.baseline, utility) if self.baseline else []

    def check(
        self, case: Case, excuse: bool = True, count: bool = True, against_baseline: bool = True
    ) -> CaseReport:
        """Judge one case; with ``excuse`` the known divergences excuse what they match (and,
        with ``count``, the differences they excuse count as this run's hits); with
        ``against_baseline`` and a configured baseline that has every utility the case needs,
        also run it there (``start_case``'s ``baseline``)."""
        return self.start(case, excuse, count, against_baseline).report()

    def start(
        self, case: Case, excuse: bool = True, count: bool = True, against_baseline: bool = True
    ) -> CaseCheck:
        """:meth:`check` in two steps (:func:`~conformance.check.start_case`): the case is
        submitted and the oracle computed; ``report()`` collects and judges. A hang or a dead
        rank (:class:`CaseAborted`) is remembered for the case's utility either way."""
        if case.utility in self.faults:
            # One hang or dead rank per utility is enough: later properties fail at once.
            raise CaseAborted(
                f"{case.describe()} not run: {self.faults[case.utility]}",
                "skipped",
                case_json(case, self.config.target),
            )
        self.cases_by_utility[case.utility] = self.cases_by_utility.get(case.utility, 0) + 1
        divergences = self.divergences if excuse else None
        world, target = self.world(case.world_size), self.config.target
        abort = not self.config.shrink_hangs
        baseline = self._baseline_for(case) if against_baseline else None
        with self._remembering_faults(case):
            started = start_case(world, case, target, divergences, count, abort, baseline=baseline)
        return CaseCheck(lambda: self._report_of(started, case), abort_blocked=False, cancel=started.cancel)

    def _baseline_for(self, case: Case) -> str | None:
        """The baseline target ``case`` also runs on, if any (one that has what it needs)."""
        if self.config.baseline and not self.baseline_lacks(case.utility):
            return self.config.baseline
        return None

    def in_flight_limit(self, case: Case) -> int:
        """How many cases, ``case`` included, may be in flight once :meth:`start` has submitted
        it: its world's ``max_in_flight`` for a case that is one job, one for a law's case or one
        against a baseline (those run at once, and a fault of a case before must be judged
        first)."""
        if case.utility.startswith(LAW_PREFIX) or self._baseline_for(case) is not None:
            return 1
        return self.world(case.world_size).max_in_flight

    def _report_of(self, started: CaseCheck, case: Case) -> CaseReport:
        with self._remembering_faults(case):
            report = started.report()
        if report.shared:
            self.shared_by_utility[case.utility] = self.shared_by_utility.get(case.utility, 0) + 1
        return report

    @contextlib.contextmanager
    def _remembering_faults(self, case: Case) -> Iterator[None]:
        """Remember a hang or a dead rank of ``case`` for its utility (see :meth:`start`)."""
        try:
            yield
        except CaseAborted as exc:
            if exc.kind in ("hang", "crash"):
                first = str(exc).splitlines()[0]
                self.faults[case.utility] = f"{case.utility} already did not finish in this run ({first})"
            raise

    @property
    def cases_run(self) -> int:
        return sum(self.cases_by_utility.values())

    def observe(self, case: Case) -> list[Any]:
        return observe_case(self.world(case.world_size), case, self.config.target)
