"""``python -m conformance``: run the suite, replay a case, fuzz, list what is known.

Exit status: 0 the target conforms apart from known divergences, 1 it diverges elsewhere,
2 usage error (one line on stderr saying what is wrong and how to fix it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from conformance.usage import UsageError

SUITE = Path(__file__).parent / "suite"


#: After the first Ctrl-C, seconds the command gets to stop cleanly (keeping what it found)
#: before it stops hard; a second Ctrl-C stops hard at once.
INTERRUPT_GRACE = 2.0


def _stop_hard() -> None:
    from conformance.world import kill_all_worlds

    kill_all_worlds()
    print("\ninterrupted: stopped", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


_pressed: list[float] = []  # when Ctrl-C was pressed


def install_interrupt_handler() -> None:
    """Ctrl-C stops the command within INTERRUPT_GRACE seconds of its arrival wherever it
    lands (even in a frame that swallows KeyboardInterrupt, such as a gc callback, or in a
    long C call that delays Python's handler); a second one stops it at once.

    The countdown does not wait for the main thread: the C-level signal handler writes to a
    wakeup pipe, and a watcher thread starts the countdown (or stops hard) when it reads it.
    """
    import signal
    import threading

    pressed = _pressed

    def on_sigint(signum: int, frame: object) -> None:
        pressed.append(time.monotonic())
        raise KeyboardInterrupt

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def watch() -> None:
        arrived = 0
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                return
            for number in data:
                if number != signal.SIGINT:
                    continue
                arrived += 1
                if arrived > 1:
                    _stop_hard()
                timer = threading.Timer(INTERRUPT_GRACE, _stop_hard)
                timer.daemon = True
                timer.start()

    threading.Thread(target=watch, daemon=True, name="sdc-interrupt-watch").start()
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, on_sigint)


def _utilities(text: str | None) -> tuple[str, ...]:
    from conformance.utilities import UTILITY_NAMES

    names = tuple(n.strip().removeprefix("_") for n in (text or "").split(",") if n.strip())
    for name in names:
        if name not in UTILITY_NAMES:
            raise argparse.ArgumentTypeError(f"unknown utility {name!r}; known: {', '.join(UTILITY_NAMES)}")
    return names


def _world_sizes(text: str) -> tuple[int, ...]:
    from conformance.world import max_world_size

    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes integers separated by commas, e.g. 2,4; got {text!r}"
        ) from None
    if not sizes or any(not 1 <= s <= max_world_size() for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must lie between 1 and {max_world_size()}; got {text!r}")
    return sizes


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes seconds, e.g. 600; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive; got {text!r}")
    return value


def _check_target(name: str) -> None:
    from conformance.targets import TargetError, load_target

    try:
        load_target(name)
    except TargetError as exc:
        raise UsageError(str(exc)) from None


def _check_backend(backend: str, sizes: tuple[int, ...]) -> None:
    if backend != "nccl":
        return
    from conformance.world import WorldUnavailable, check_nccl_available

    try:
        check_nccl_available(max(sizes))
    except WorldUnavailable as exc:
        raise UsageError(str(exc)) from None


def _expected_name(expected: str | None, target: str) -> str | None:
    """Validate --expected (a path, a shipped name such as torch, or none)."""
    from conformance.divergences import DivergenceFileError, load_divergences

    if expected is None:
        return None
    try:
        load_divergences(expected)
    except DivergenceFileError as exc:
        raise UsageError(str(exc)) from None
    return expected


def _common_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        "SDC_TARGET": args.target,
        "SDC_WORLD_SIZES": ",".join(map(str, args.world_sizes)),
        "SDC_BACKEND": args.backend,
        "SDC_PROFILE": args.profile,
        "SDC_CASE_TIMEOUT": str(args.case_timeout),
    }
    if args.expected is not None:
        env["SDC_EXPECTED"] = args.expected
    if args.baseline is not None:
        env["SDC_BASELINE"] = args.baseline
    if args.max_examples:
        env["SDC_MAX_EXAMPLES"] = str(args.max_examples)
    if getattr(args, "only", None):
        env["SDC_ONLY"] = ",".join(args.only)
    if getattr(args, "placement", None):
        env["SDC_PLACEMENTS"] = ",".join(args.placement)
    if getattr(args, "strict", False):
        env["SDC_STRICT"] = "1"
    if getattr(args, "shrink_hangs", False):
        env["SDC_SHRINK_HANGS"] = "1"
    if getattr(args, "time_limit", None):
        env["SDC_TIME_LIMIT"] = str(args.time_limit)
    return env


# ---------------------------------------------------------------------------------- run


def _plugin_args() -> list[str]:
    """``-p conformance.plugin`` where pytest will not load it by itself: the package is not
    installed (a source checkout on ``PYTHONPATH``) or plugin autoloading is off. Without it the
    suite has no ``harness`` fixture."""
    from importlib.metadata import entry_points

    installed = any(ep.value == "conformance.plugin" for ep in entry_points(group="pytest11"))
    if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return []
    return ["-p", "conformance.plugin"]


def cmd_run(args: argparse.Namespace) -> int:
    if args.launcher == "torchrun":
        if "WORLD_SIZE" not in os.environ:
            raise UsageError(
                "--launcher torchrun must run under torchrun: torchrun --nproc-per-node N -m conformance run ..."
            )
        args.world_sizes = (int(os.environ["WORLD_SIZE"]),)  # the launched world is the only one
    import pytest
    import torch

    from conformance.divergences import load_divergences
    from conformance.harness import HarnessConfig
    from conformance.plugin import summary_line
    from conformance.report import Collector, RunReport, remember_divergences, write_json
    from conformance.targets import load_target

    os.environ.update(_common_env(args))
    config = HarnessConfig.from_args(
        args,
        profile=args.profile,
        strict=args.strict,
        shrink_hangs=args.shrink_hangs,
        time_limit=args.time_limit,
    )
    if os.environ.get("RANK", "0") == "0":
        print("\n".join(config.header_lines()), flush=True)  # pytest -q prints no header
    remember_divergences(load_divergences(config.expected_name).entries)
    pytest_args = [
        str(SUITE),
        "-p",
        "no:cacheprovider",
        "-v" if args.verbose else "-q",
        "-rfEX",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        *_plugin_args(),
    ]
    if args.jobs > 1:
        pytest_args += ["-n", str(args.jobs)]
    if args.junit:
        pytest_args += [f"--junitxml={args.junit}"]
    collector = Collector()
    if args.launcher == "torchrun":
        from conformance.world.torchrun_main import run_under_torchrun

        if args.jobs > 1:
            raise UsageError("--jobs cannot be combined with --launcher torchrun; torchrun sets the ranks")
        status = run_under_torchrun(pytest_args, plugins=[collector])
        if os.environ.get("RANK", "0") != "0":
            return status  # only rank 0 drives the suite and reports
    else:
        status = pytest.main(pytest_args, plugins=[collector])
    if status in (pytest.ExitCode.USAGE_ERROR,):
        return 2
    if status == pytest.ExitCode.INTERRUPTED:
        print("interrupted", file=sys.stderr)
        return 130
    by_utility: dict[str, int] = {}
    for utility, count in collector.stats.get("by_utility", {}).items():
        key = "laws" if utility.startswith("law:") else utility
        by_utility[key] = by_utility.get(key, 0) + count
    divergences = load_divergences(config.expected_name)
    stats = {"cases": 0, "seconds": 0.0, "cases_per_second": 0.0, **collector.stats}
    report = RunReport(
        target=args.target,
        torch_version=torch.__version__,
        target_file=load_target(args.target).file,
        divergence_file=divergences.source,
        world_sizes=list(args.world_sizes),
        backend=args.backend,
        profile=args.profile,
        divergences={
            **divergences.to_json(),
            "excused": stats.get("excused", {}),
            "unused": stats.get("unused", []),
        },
        summary={
            "cases": stats["cases"],
            "seconds": stats["seconds"],
            "cases_per_second": stats["cases_per_second"],
            **{
                o: sum(r.outcome == o for r in collector.results)
                for o in ("passed", "failed", "missing", "xfailed", "xpassed", "skipped")
            },
            "excused": stats.get("excused", {}),
            "shared_with_baseline": stats.get("shared", {}),
            "cases_by_utility": by_utility,
        },
        results=collector.results,
    )
    print()
    print(report.table())
    s = report.summary
    print(
        f"\n{summary_line(stats)}, target {args.target}: "
        f"{s['passed']} passed, {s['failed']} failed, {s['missing']} missing, {s['xfailed']} known divergences, "
        f"{s['xpassed']} no longer reproducing, {s['skipped']} skipped"
    )
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    failed = s["failed"] or s["missing"] or any(r.outcome == "error" for r in report.results)
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
        return 1
    return 1 if failed else 0


# ---------------------------------------------------------------------------------- replay


def cmd_replay(args: argparse.Namespace) -> int:
    from conformance.case import CaseError, load_case

    try:
        case = load_case(args.case)
    except CaseError as exc:
        raise UsageError(str(exc)) from None
    if args.script:
        from conformance.script import ScriptUnsupported, standalone_script

        try:
            print(standalone_script(case, args.target))
        except ScriptUnsupported as exc:
            raise UsageError(str(exc)) from None
        return 0
    from conformance.check import check_case
    from conformance.divergences import load_divergences
    from conformance.harness import HarnessConfig
    from conformance.world import World

    expected = HarnessConfig(target=args.target, expected=args.expected).expected_name
    divergences = load_divergences(expected)
    print(f"replaying {case.describe()} against {args.target}")
    with World(case.world_size, case.backend, job_timeout=args.case_timeout) as world:
        report = check_case(world, case, args.target, divergences)
    print("\n".join(report.rank_lines()))
    return 0 if report.passed else 1


# ---------------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    import ast

    from conformance.divergences import SHIPPED
    from conformance.laws import LAWS
    from conformance.targets import ALIASES
    from conformance.utilities import UTILITY_NAMES
    from strategies.placements import registered_placements

    print("utilities:")
    for name in UTILITY_NAMES:
        print(f"  {name}")
    print("properties:")
    for module in sorted(SUITE.glob("test_*.py")):
        tree = ast.parse(module.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                print(f"  {module.stem}::{node.name}")
    print("laws:")
    for name, utilities in LAWS.items():
        print(f"  {name}: {', '.join(utilities)}")
    print("placement models:")
    for kind in registered_placements():
        print(f"  {kind}")
    print("targets:")
    for alias, target_module in ALIASES.items():
        print(f"  {alias} = {target_module}")
    print("  (or any importable module path)")
    print("known-divergence files:")
    for path in sorted(SHIPPED.glob("*.toml")):
        print(f"  {path.stem} ({path})")
    return 0


# ---------------------------------------------------------------------------------- fuzz, selfcheck


def cmd_fuzz(args: argparse.Namespace) -> int:
    from conformance.fuzz import cmd_fuzz as fuzz

    return fuzz(args)


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from conformance.selfcheck import selfcheck

    return selfcheck(list(args.world_sizes), args.backend)


# ---------------------------------------------------------------------------------- parser


def _add_suite_options(p: argparse.ArgumentParser, default_target: str) -> None:
    p.add_argument(
        "--target",
        default=default_target,
        help=f"module under test: impl, torch or a module path (default {default_target})",
    )
    p.add_argument(
        "--expected", default=None, help="known-divergence file: a path, a shipped name (torch) or none"
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="also run every case on this target (e.g. torch); the verdict is where the target differs from it",
    )
    p.add_argument(
        "--world-sizes", default="2,4", type=_world_sizes, help="comma-separated world sizes (default 2,4)"
    )
    p.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    p.add_argument(
        "--max-examples", type=int, default=None, help="examples per property (overrides the profile)"
    )
    p.add_argument(
        "--case-timeout", type=float, default=30.0, help="seconds before a case is a hang (default 30)"
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line: ``error: argument --only: unknown utility 'x'; known: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m conformance", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the property suite and print a table per utility")
    _add_suite_options(run, default_target="torch")
    run.add_argument("--profile", default="dev", choices=["dev", "ci", "fuzz"])
    run.add_argument("--only", type=_utilities, default=(), help="comma-separated utilities")
    run.add_argument("--jobs", type=int, default=1, help="pytest-xdist workers (default 1)")
    run.add_argument("--json", default=None, help="write a JSON report here")
    run.add_argument("--junit", default=None, help="write a JUnit XML report here")
    run.add_argument("--placement", action="append", default=[], help="user placement model module:Model")
    run.add_argument("--launcher", default="spawn", choices=["spawn", "torchrun"])
    run.add_argument(
        "--strict", action="store_true", help="known divergences that no longer reproduce fail the run"
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="pytest's verbose output, with Hypothesis' hints to reproduce a failing example",
    )
    run.add_argument(
        "--time-limit",
        type=_positive_seconds,
        default=None,
        help="seconds for the whole run: later properties are reported as not run",
    )
    run.add_argument(
        "--shrink-hangs",
        action="store_true",
        help="shrink hangs and dead ranks like other failures (each step restarts the world; slow)",
    )
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser("replay", help="re-run one case and print observed vs expected per rank")
    replay.add_argument("case", help="a case blob (sdc1:...), JSON text, or a case file")
    replay.add_argument("--target", default="torch")
    replay.add_argument("--expected", default=None)
    replay.add_argument("--case-timeout", type=float, default=30.0)
    replay.add_argument(
        "--script",
        action="store_true",
        help="print a standalone script reproducing the case against --target",
    )
    replay.set_defaults(func=cmd_replay)

    fuzz = sub.add_parser(
        "fuzz", help="fuzz until a time budget (or --max-examples per utility), saving each new failure"
    )
    _add_suite_options(fuzz, default_target="torch")
    fuzz.add_argument("--time", default="10m", help="time budget, e.g. 90s, 10m, 1h (default 10m)")
    fuzz.add_argument("--placement", action="append", default=[], help="user placement model module:Model")
    fuzz.add_argument("--only", type=_utilities, default=(), help="comma-separated utilities")
    fuzz.add_argument(
        "--out", default="failures", help="directory for failing case files (default failures/)"
    )
    fuzz.set_defaults(func=cmd_fuzz)

    listing = sub.add_parser("list", help="utilities, properties, placement models, targets")
    listing.set_defaults(func=cmd_list)

    check = sub.add_parser("selfcheck", help="start worlds and run a DTensor gather on them")
    check.add_argument("--world-sizes", default="2,4", type=_world_sizes)
    check.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    check.set_defaults(func=cmd_selfcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    import signal

    # Until torch is loaded (seconds on a busy machine, in C code where no Python signal
    # handler can run) Ctrl-C simply ends the process: nothing has started or been found yet.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    import torch.distributed  # noqa: F401

    install_interrupt_handler()
    status = _main(argv)
    if _pressed:  # interrupted: what was found is reported; skip a slow interpreter shutdown
        from conformance.world import kill_all_worlds

        kill_all_worlds()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status if status else 130)
    return status


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed help, or its one-line usage error
        return 0 if not exc.code else 2
    try:
        if getattr(args, "target", None) and args.command in ("run", "replay", "fuzz"):
            _check_target(args.target)
        if getattr(args, "baseline", None):
            _check_target(args.baseline)
        if getattr(args, "expected", None):
            _expected_name(args.expected, args.target)
        if getattr(args, "backend", None):
            _check_backend(args.backend, getattr(args, "world_sizes", (1,)))
        if getattr(args, "jobs", 1) < 1:
            raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
        if getattr(args, "max_examples", None) is not None and args.max_examples < 1:
            raise UsageError(f"--max-examples must be at least 1, got {args.max_examples}")
        for reference in getattr(args, "placement", []) or []:
            _check_placement(reference)
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _check_placement(reference: str) -> None:
    from strategies.placements import load_placement

    try:
        load_placement(reference)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise UsageError(f"--placement {reference!r}: {exc}") from None
