"""Slow is not hung: telling a rank that is still computing from one that waits forever.

A rank that has not answered when its deadline passes is judged by its CPU time: a rank that
burned at least ``busy_fraction`` of a core since the last look is still working (a loaded
machine, a first job that imports and builds meshes), so its deadline moves on by ``window``
seconds. A rank asleep or blocked in a collective burns next to nothing and is declared hung
(or blocked) as before. A rank that spins forever is bounded by CPU time, not wall time (the
same work takes longer on a loaded machine but costs the same CPU): once it has used
``cpu_budget`` CPU-seconds in the job it counts as hung. Only the deadline moves: a rank
that answers is never waited for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

#: The smallest share of one core that counts as "still computing". A rank blocked in a gloo
#: collective or in ``time.sleep`` uses well under 1%; a computing rank on a machine loaded
#: five times over still gets about 20%.
BUSY_FRACTION = 0.05
#: How long the deadline moves on while a rank is still computing (and the sampling window).
WINDOW = 2.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """CPU time (user + system) of a process, or of one of its threads; None if unknown."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15 of stat)


class ProgressWatch:
    """Whether silent ranks still make progress, from a ``rank -> CPU seconds`` sampler."""

    def __init__(
        self,
        sample: Callable[[int], float | None],
        ranks: Iterable[int],
        *,
        cpu_budget: float = float("inf"),
        busy_fraction: float = BUSY_FRACTION,
        window: float = WINDOW,
    ) -> None:
        self.sample = sample
        self.cpu_budget = cpu_budget
        self.busy_fraction = busy_fraction
        self.window = window
        self._last: dict[int, tuple[float, float]] = {}
        self.note(ranks)
        self._first = {rank: cpu for rank, (_, cpu) in self._last.items()}

    def note(self, ranks: Iterable[int]) -> None:
        now = time.monotonic()
        for rank in ranks:
            cpu = self.sample(rank)
            if cpu is not None:
                self._last[rank] = (now, cpu)

    def busy(self, ranks: Iterable[int]) -> list[int]:
        """The ranks among ``ranks`` that used at least ``busy_fraction`` of a core since the
        last look (which becomes now), and less than ``cpu_budget`` CPU-seconds in all."""
        now = time.monotonic()
        found = []
        for rank in ranks:
            cpu = self.sample(rank)
            last = self._last.get(rank)
            if cpu is None:
                continue
            self._last[rank] = (now, cpu)
            if last is None or now <= last[0] or cpu - self._first.get(rank, cpu) >= self.cpu_budget:
                continue
            if cpu - last[1] >= self.busy_fraction * (now - last[0]):
                found.append(rank)
        return found
