"""Worlds of ranks with an initialised process group, and the jobs they run.

One job protocol (:mod:`~conformance.world.protocol`: dispatch, collect, judge hang / crash /
error / blocked) over two transports: ranks spawned here (:mod:`~conformance.world.spawn`,
:class:`World`) and a ``torchrun`` launch driven from rank 0
(:mod:`~conformance.world.torchrun`, :mod:`~conformance.world.torchrun_main`). Jobs ask
:func:`context` about the rank they run on (:mod:`~conformance.world.context`).
"""

from conformance.world.context import RankContext, context, health_check, install_context
from conformance.world.limits import (
    BACKENDS,
    LAUNCHERS,
    MAX_WORLD_SIZE,
    check_nccl_available,
    max_world_size,
)
from conformance.world.protocol import (
    DEFAULT_ERROR_GRACE,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    SLOW_ALLOWANCE_FACTOR,
    JobFailed,
    JobRunner,
    PendingJob,
    RankFailure,
    WorldUnavailable,
)
from conformance.world.spawn import World, kill_all_worlds

__all__ = [
    "BACKENDS",
    "DEFAULT_ERROR_GRACE",
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "LAUNCHERS",
    "MAX_WORLD_SIZE",
    "SLOW_ALLOWANCE_FACTOR",
    "JobFailed",
    "JobRunner",
    "PendingJob",
    "RankContext",
    "RankFailure",
    "World",
    "WorldUnavailable",
    "check_nccl_available",
    "context",
    "health_check",
    "install_context",
    "kill_all_worlds",
    "max_world_size",
]
