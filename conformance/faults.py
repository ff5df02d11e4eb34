"""Where a rank is stuck, and what a dead rank last said.

Rank side: :func:`report_faults_to` makes a rank dump every thread's Python stack into its
stack file on SIGUSR1 (``faulthandler``, which works while the main thread is blocked in a
collective or in ``time.sleep``), and sends its stderr to its log file (set
``SDC_RANK_STDERR=inherit`` to keep it on the console), where a fatal signal's traceback
lands too. Driver side: :func:`collect_stacks` signals the ranks and reads what they wrote,
trimmed to the frames that matter (the target, torch); :func:`stderr_tail` reads the last
lines a rank wrote.
"""

from __future__ import annotations

import faulthandler
import os
import re
import signal
import time
from pathlib import Path

STACK_SIGNAL = signal.SIGUSR1
TAIL_LINES = 15
_HARNESS_DIR = str(Path(__file__).resolve().parent)
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>.+)$')
_kept_open: list = []  # the files faulthandler writes to must stay open


def stack_path(logdir: str, generation: int, rank: int) -> Path:
    return Path(logdir) / f"g{generation}-rank{rank}.stack"


def stderr_path(logdir: str, generation: int, rank: int) -> Path:
    return Path(logdir) / f"g{generation}-rank{rank}.err"


def report_faults_to(logdir: str, generation: int, rank: int) -> None:
    """Rank side: stacks on SIGUSR1 to the stack file, stderr (and fatal tracebacks) to the log."""
    stacks = open(stack_path(logdir, generation, rank), "w")  # noqa: SIM115 - kept open for faulthandler
    _kept_open.append(stacks)
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True)
    if os.environ.get("SDC_RANK_STDERR") != "inherit":
        err = os.open(stderr_path(logdir, generation, rank), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(err, 2)
        os.close(err)
    faulthandler.enable(all_threads=True)  # a fatal signal's traceback goes to (the new) stderr


def collect_stacks(pids: dict[int, int], logdir: str, generation: int, wait: float = 2.0) -> dict[int, str]:
    """Driver side: every listed rank's current stacks (rank -> trimmed text), by signalling
    its process; ranks that do not answer within ``wait`` seconds are left out."""
    paths = {rank: stack_path(logdir, generation, rank) for rank in pids}
    before = {rank: _size(path) for rank, path in paths.items()}
    for rank, pid in pids.items():
        try:
            os.kill(pid, STACK_SIGNAL)
        except OSError:
            before.pop(rank)
    found: dict[int, str] = {}
    deadline = time.monotonic() + wait
    while before and time.monotonic() < deadline:
        time.sleep(0.05)
        for rank in list(before):
            size = _size(paths[rank])
            if size > before[rank]:
                time.sleep(0.05)  # let the dump finish
                with open(paths[rank]) as f:
                    f.seek(before.pop(rank))
                    found[rank] = trim_stack(f.read())
    return found


def stderr_tail(logdir: str, generation: int, rank: int, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines a rank wrote to stderr ('' when it wrote none). When the rank
    died of a fatal error (gloo's abort), the lines before Python's fatal-error dump come
    first: they say why (the C++ exception), the dump only where."""
    try:
        text = stderr_path(logdir, generation, rank).read_text(errors="replace")
    except OSError:
        return ""
    all_lines = text.rstrip().splitlines()
    fatal = next((i for i, line in enumerate(all_lines) if line.startswith("Fatal Python error")), None)
    if fatal is None or fatal >= len(all_lines) - lines:
        return "\n".join(all_lines[-lines:])
    cause = all_lines[max(0, fatal - 5) : fatal + 1]
    return "\n".join([*cause, "...", *all_lines[-(lines - len(cause) - 1) :]])


def trim_stack(text: str) -> str:
    """A faulthandler dump with the harness's own frames (and threads that hold only those,
    such as watchdogs) left out, so that what remains is the target's and torch's."""
    kept: list[str] = []
    for block in re.split(r"\n(?=(?:Current thread|Thread) 0x)", text.strip()):
        header, *frames = block.strip().splitlines()
        mine = [f for f in frames if not _harness_frame(f)]
        if mine:
            kept += [header, *mine]
    return "\n".join(kept) if kept else text.strip()


def _harness_frame(line: str) -> bool:
    match = _FRAME.match(line)
    if match is None:
        return False
    path = match.group("file")
    return path.startswith(_HARNESS_DIR) or "/multiprocessing/" in path or path.endswith("/threading.py")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def own_stacks() -> str:
    """This process's threads' stacks, trimmed as :func:`trim_stack` does (for a rank that is
    asked over a store rather than signalled)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        return trim_stack(f.read())


def thread_stack(thread_id: int) -> str:
    """One thread of this process (by ``threading.get_ident()``), in faulthandler's format."""
    import sys
    import traceback

    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ""
    lines = [f"Thread {thread_id:#x} (most recent call first):"]
    for summary in reversed(traceback.extract_stack(frame)):
        lines.append(f'  File "{summary.filename}", line {summary.lineno} in {summary.name}')
    return trim_stack("\n".join(lines))


def target_traceback(exc: BaseException, target_file: str) -> str:
    """Where ``exc`` was raised, as Python prints a traceback but with only the frames in the
    target's source (``target_file``, or its package's folder for an ``__init__.py``): not
    the harness's, pytest's or torch's. '' when no frame of the traceback is the target's."""
    import traceback

    source = Path(target_file).resolve()
    root = source.parent if source.name == "__init__.py" else source
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if (where := Path(frame.filename).resolve()) == root or root in where.parents
    ]
    if not frames:
        return ""
    lines = ["Traceback (most recent call last; the target's frames):", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(exc)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines).rstrip("\n")
