"""Which processes of a session (a command started with ``start_new_session=True``) are alive."""

from __future__ import annotations

import subprocess


def alive_in_session(session_id: int) -> list[str]:
    """``"<stat> <pid> <args>"`` of every live process of the session; zombies are gone."""
    ps = subprocess.run(
        ["ps", "-o", "stat=,pid=,args=", "-s", str(session_id)], capture_output=True, text=True
    )
    return [line for line in ps.stdout.strip().splitlines() if line.strip() and not line.startswith("Z")]
