"""Usage errors of the command line, shared by ``cli`` and the commands it runs (``fuzz``)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad command-line input; the message is the one line the user sees."""
