"""nox sessions for CI and users: ``nox -s tests``, ``nox -s lint``, ``nox -s bench`` ...

Each session installs the torch build named by ``TORCH_SPEC`` (default ``torch==2.13.0``,
the CPU wheel this kind of machine keeps on disk) before the project, so pip never swaps
in a multi-GB CUDA build. Set ``TORCH_SPEC`` to another pin or wheel elsewhere.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
SOURCES = ["impl", "strategies", "conformance", "tests", "benchmarks", "noxfile.py"]


def install_project(session: nox.Session, torch_spec: str = TORCH_SPEC) -> None:
    session.install(torch_spec)
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """The harness's own tests, two xdist workers."""
    install_project(session)
    session.run("python", "-m", "pytest", "-n", "2", *session.posargs)


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
def bench(session: nox.Session) -> None:
    """Figures: world dispatch overhead vs a bare call vs a fresh world per call."""
    install_project(session)
    session.run("python", "benchmarks/bench_world.py", *session.posargs)
