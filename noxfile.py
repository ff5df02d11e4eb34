"""nox sessions for CI and users: ``nox -s tests lint``, ``nox -s conformance``, ``nox -s fuzz``...

Each session installs the torch build named by ``TORCH_SPEC`` (default ``torch==2.13.0``,
the CPU wheel this kind of machine keeps on disk) before the project, so pip never swaps
in a multi-GB CUDA build. Set ``TORCH_SPEC`` to another pin or wheel elsewhere.
"""

from __future__ import annotations

import os
import shlex

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
# Releases torch_matrix runs (both install on a CPU-only Linux machine: 2.13.0 as the local CPU
# wheel, 2.14.1 as the CUDA build, which runs gloo without a GPU); one that cannot be installed
# here is skipped with the reason.
TORCH_MATRIX = os.environ.get("TORCH_MATRIX", "2.13.0,2.14.1").split(",")
SOURCES = ["impl", "strategies", "conformance", "tests", "benchmarks", "noxfile.py"]


def install_project(session: nox.Session, torch_spec: str = TORCH_SPEC) -> None:
    session.install(*shlex.split(torch_spec))  # e.g. "torch==2.13.0 --index-url URL"
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """The harness's own tests and the suite against impl, two xdist workers."""
    install_project(session)
    session.run("python", "-m", "pytest", "-n", "2", "tests", "conformance/suite", *session.posargs)


@nox.session
@nox.parametrize("target", ["impl", "torch"])
def conformance(session: nox.Session, target: str) -> None:
    """The property suite against a target, with its table and a JSON report."""
    install_project(session)
    session.run(
        "python",
        "-m",
        "conformance",
        "run",
        "--target",
        target,
        "--profile",
        "ci",
        "--jobs",
        "2",
        "--json",
        f"conformance-{target}.json",
        "--junit",
        f"conformance-{target}.xml",
        *session.posargs,
    )


@nox.session
def fuzz(session: nox.Session) -> None:
    """Fuzz the installed torch for a while (``nox -s fuzz -- --time 30m``); failures go to failures/."""
    install_project(session)
    session.run("python", "-m", "conformance", "fuzz", *(session.posargs or ["--time", "5m"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Figures: world dispatch overhead vs a bare call vs a fresh world per call; cases/s per
    utility through the real path, where a case's time goes, and its ratio to a fresh world per
    case (``benchmarks/bench_cases.py``; posargs go to bench_world.py)."""
    install_project(session)
    session.run("python", "benchmarks/bench_world.py", *session.posargs)
    session.run("python", "benchmarks/bench_faults.py")
    session.run("python", "benchmarks/bench_cases.py")


@nox.session(venv_backend="none")
def loaded(session: nox.Session) -> None:
    """The CI suite unloaded, then next to 4 CPU burners; prints both times (``BURNERS=n``)."""
    session.run("bash", "scripts/test-loaded.sh", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the three packages."""
    install_project(session)
    session.run("mypy", *session.posargs)


@nox.session
@nox.parametrize("release", TORCH_MATRIX)
def torch_matrix(session: nox.Session, release: str) -> None:
    """The suite against each torch release of TORCH_MATRIX, with torch's known divergences."""
    try:
        session.install(f"torch=={release}", silent=True)
    except nox.command.CommandFailed:
        session.skip(f"torch {release} cannot be installed on this machine")
    session.install("-e", ".[dev]")
    session.run(
        "python",
        "-m",
        "conformance",
        "run",
        "--target",
        "torch",
        "--profile",
        "ci",
        "--jobs",
        "2",
        "--json",
        f"conformance-torch-{release}.json",
        *session.posargs,
        success_codes=[0, 1],  # the table below says which release diverged
    )
    session.notify("torch_matrix_table")


@nox.session(venv_backend="none")
def torch_matrix_table(session: nox.Session) -> None:
    """One row per torch release run by torch_matrix: passed, failed, known divergences still
    reproducing, no longer reproducing; fails when a release failed or has stale entries."""
    session.run("python3", "scripts/torch_matrix_table.py", external=True)
