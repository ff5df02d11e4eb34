"""Processes the tests start: which of a session's (a command started with
``start_new_session=True``) are alive, and a Ctrl-C that reaches them."""

from __future__ import annotations

import signal
import subprocess
import time


def alive_in_session(session_id: int) -> list[str]:
    """``"<stat> <pid> <args>"`` of every live process of the session; zombies are gone."""
    ps = subprocess.run(
        ["ps", "-o", "stat=,pid=,args=", "-s", str(session_id)], capture_output=True, text=True
    )
    return [line for line in ps.stdout.strip().splitlines() if line.strip() and not line.startswith("Z")]


def left_in_session(session_id: int, settle: float = 10.0) -> list[str]:
    """What :func:`alive_in_session` still finds once the session's processes had ``settle``
    seconds to exit (asked every 0.1 s; a rank or a resource tracker notices its dead parent
    within half a second on an idle machine, and may take seconds on a loaded one)."""
    deadline = time.monotonic() + settle
    while (alive := alive_in_session(session_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` of a command the test interrupts with SIGINT: Ctrl-C handled as in a
    terminal's foreground process. A test run started in the background of a non-interactive
    shell (``pytest ... &``) inherits SIGINT *ignored*, and so would the command: it would
    sleep through the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
