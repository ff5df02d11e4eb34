"""A persistent world of spawned ranks with an initialised process group.

The driver (pytest / Hypothesis process) starts N ranks once and sends each job — a
module-level function and its arguments — to every rank, then collects one picklable result
per rank. A job that hangs, or a rank that dies (exit, signal, gloo's SIGABRT), tears the
world down; the next job starts a fresh one. Ranks exit by themselves when the driver dies.
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing import connection, get_context
from typing import Any, Protocol

from conformance import wire
from conformance.faults import collect_stacks, report_faults_to, stderr_tail
from conformance.progress import ProgressWatch, cpu_seconds

DEFAULT_JOB_TIMEOUT = 30.0
# After one rank raises, the others get this long to finish before the world is killed.
DEFAULT_START_TIMEOUT = 120.0  # seconds for a world to start and run its setup jobs
DEFAULT_ERROR_GRACE = 5.0
# A rank still computing when its deadline passes (conformance.progress) is waited for until
# it has used this many times the job timeout in CPU-seconds: slow is not hung, but a spin is.
SLOW_ALLOWANCE_FACTOR = 4.0
MAX_WORLD_SIZE = 8


def max_world_size() -> int:
    """Spawned worlds stop at MAX_WORLD_SIZE; under torchrun the launched world sets the limit."""
    launched = os.environ.get("SDC_LAUNCHER") == "torchrun" or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and os.environ.get("WORLD_SIZE"):
        return max(MAX_WORLD_SIZE, int(os.environ["WORLD_SIZE"]))
    return MAX_WORLD_SIZE


BACKENDS = ("gloo", "nccl")


class JobRunner(Protocol):
    """What runs cases: a spawned :class:`World` or a torchrun-launched world."""

    size: int

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]: ...


class WorldUnavailable(RuntimeError):
    """The requested world cannot exist on this machine (e.g. NCCL without enough GPUs)."""


@dataclass(frozen=True)
class RankFailure:
    """What one rank reported instead of a result."""

    type_name: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class JobFailed(Exception):
    """A job did not produce a result on every rank.

    ``kind`` is ``"error"`` (a rank raised, or returned early while others stayed blocked),
    ``"hang"`` (no answer within the timeout) or ``"crash"`` (a rank died). ``failures`` maps
    each involved rank to what it reported; ``results`` holds what the other ranks returned.
    """

    def __init__(
        self,
        kind: str,
        failures: dict[int, RankFailure],
        detail: str = "",
        results: dict[int, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.results = results or {}  # what the other ranks returned
        self.failures = dict(sorted(failures.items()))
        self.detail = detail
        ranks = ", ".join(str(r) for r in self.failures)
        first = next(iter(self.failures.values()), None)
        summary = f"job {kind} on rank(s) {ranks}"
        if first is not None:
            summary += f": {first}"
        if detail:
            summary += f" ({detail})"
        super().__init__(summary)


# --------------------------------------------------------------------------- rank side


@dataclass
class RankContext:
    """What a job running on a rank can ask about its world."""

    rank: int
    world_size: int
    backend: str
    device: Any  # torch.device
    _meshes: dict[tuple[int, ...], Any] = field(default_factory=dict)
    _groups: dict[tuple[int, ...], Any] = field(default_factory=dict)

    def mesh(self, shape: tuple[int, ...]) -> Any:
        """The DeviceMesh of ``shape`` over all ranks, built once per world and cached."""
        shape = tuple(int(s) for s in shape)
        if shape not in self._meshes:
            from torch.distributed.device_mesh import init_device_mesh

            names = tuple(f"d{i}" for i in range(len(shape)))
            self._meshes[shape] = init_device_mesh(self.device.type, shape, mesh_dim_names=names)
        return self._meshes[shape]

    def group(self, ranks: tuple[int, ...]) -> Any:
        """A process group over ``ranks`` (every rank must ask), built once and cached."""
        ranks = tuple(int(r) for r in ranks)
        if ranks not in self._groups:
            import torch.distributed as dist

            self._groups[ranks] = dist.new_group(list(ranks))
        return self._groups[ranks]

    def meshes(self) -> list[Any]:
        return list(self._meshes.values())

    def groups(self) -> list[tuple[tuple[int, ...], Any]]:
        """The cached process groups (:meth:`group`), with their global ranks."""
        return list(self._groups.items())


_context: RankContext | None = None


def install_context(rank: int, world_size: int, backend: str, device: Any) -> RankContext:
    """Make this process a rank of a world whose process group is initialised (jobs and
    ``replay --script`` ranks ask :func:`context`)."""
    global _context
    _context = RankContext(rank=rank, world_size=world_size, backend=backend, device=device)
    return _context


def context() -> RankContext:
    """The calling rank's context; only valid inside a job."""
    if _context is None:
        raise RuntimeError("conformance.world.context() is only available inside a world job")
    return _context


def _exit_when_parent_dies(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(0.5)


def _health_check() -> None:
    """A collective on the default group, on every cached mesh dimension group and on every
    cached subgroup this rank belongs to (a raise inside a collective can leave any of them out
    of step, and the next collective on it would hang)."""
    import torch
    import torch.distributed as dist

    ctx = context()
    probe = torch.ones(1, device=ctx.device)
    dist.all_reduce(probe)
    if int(probe.item()) != ctx.world_size:
        raise RuntimeError(f"health check: all_reduce gave {probe.item()}")
    for mesh in ctx.meshes():
        for dim in range(mesh.ndim):
            group = mesh.get_group(dim)
            probe = torch.ones(1, device=ctx.device)
            dist.all_reduce(probe, group=group)
            if int(probe.item()) != mesh.size(dim):
                raise RuntimeError(f"health check: mesh dim {dim} all_reduce gave {probe.item()}")
    for ranks, group in ctx.groups():
        if ctx.rank in ranks:
            probe = torch.ones(1, device=ctx.device)
            dist.all_reduce(probe, group=group)
            if int(probe.item()) != len(ranks):
                raise RuntimeError(f"health check: group {ranks} all_reduce gave {probe.item()}")


def _rank_main(
    rank: int,
    size: int,
    backend: str,
    store_port: int,
    generation: int,
    conn: connection.Connection,
    parent_pid: int,
    logdir: str,
) -> None:
    # Ctrl-C belongs to the driver: it tears the world down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report_faults_to(logdir, generation, rank)
    threading.Thread(target=_exit_when_parent_dies, args=(parent_pid,), daemon=True).start()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch
    import torch.distributed as dist

    # Every ShardedTensor attribute access warns; ranks would drown the output.
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
    torch.set_num_threads(1)
    if backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    client = dist.TCPStore("127.0.0.1", store_port, is_master=False, timeout=timedelta(seconds=60))
    store = dist.PrefixStore(f"world{generation}", client)
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=size,
        device_id=device if backend == "nccl" else None,
    )
    install_context(rank, size, backend, device)
    conn.send_bytes(pickle.dumps(("ready", rank)))

    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            break
        try:
            fn, args, kwargs = pickle.loads(payload)
        except Exception as exc:
            reply = ("err", _failure_of(exc))
        else:
            if fn is None:  # shutdown request
                break
            try:
                reply = ("ok", fn(*args, **kwargs))
            except BaseException as exc:
                reply = ("err", _failure_of(exc))
        try:
            data = wire.dumps(reply)
        except Exception as exc:
            data = wire.dumps(("err", _failure_of(exc, "result could not be pickled: ")))
        conn.send_bytes(data)

    # A barrier first: gloo can abort when a group is destroyed while a peer still talks.
    try:
        dist.barrier()
        dist.destroy_process_group()
    finally:
        os._exit(0)


def _failure_of(exc: BaseException, prefix: str = "") -> RankFailure:
    return RankFailure(
        type_name=type(exc).__qualname__,
        message=prefix + str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )


# --------------------------------------------------------------------------- driver side

_live_worlds: weakref.WeakSet[World] = weakref.WeakSet()


@atexit.register
def _close_all_worlds() -> None:
    for world in list(_live_worlds):
        world.close()


def kill_all_worlds() -> None:
    """Kill every rank of every world of this process at once (a hard stop): SIGKILL first,
    for all of them, before waiting for any."""
    worlds = list(_live_worlds)
    for world in worlds:
        for proc in world._procs:
            if proc.is_alive():
                proc.kill()
    for world in worlds:
        world.close(polite=False)


class World:
    """N spawned ranks sharing one process group, reused across jobs.

    ``run(fn, *args, **kwargs)`` calls ``fn`` on every rank and returns the list of results,
    rank by rank, or raises :class:`JobFailed`. A result with a true ``may_desync`` attribute
    is treated like an error for timing: the other ranks get ``error_grace`` seconds. The world (re)starts lazily on the first job
    after construction or after a failure that left it unusable.
    """

    def __init__(
        self,
        size: int,
        backend: str = "gloo",
        *,
        job_timeout: float = DEFAULT_JOB_TIMEOUT,
        error_grace: float = DEFAULT_ERROR_GRACE,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        setup: tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...] = (),
    ) -> None:
        if not isinstance(size, int) or not 1 <= size <= MAX_WORLD_SIZE:
            raise ValueError(f"world size must be an integer from 1 to {MAX_WORLD_SIZE}, got {size!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "nccl":
            check_nccl_available(size)
        self.size = size
        self.backend = backend
        self.job_timeout = job_timeout
        self.error_grace = error_grace
        self.start_timeout = start_timeout
        self.setup = setup  # jobs every (re)started world runs first, e.g. registering plug-ins
        self.restarts = 0
        self.jobs_run = 0
        self._generation = 0
        self._procs: list[Any] = []
        self._conns: list[connection.Connection] = []
        self._store: Any = None
        self._needs_health_check = False
        self._logdir = tempfile.mkdtemp(prefix="sdc-world-")  # ranks' stacks and stderr
        _live_worlds.add(self)

    # -- lifecycle

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> None:
        """Spawn the ranks and wait until every one has joined the process group."""
        if self._procs:
            return
        import torch.distributed as dist

        self._store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        if self._generation:
            self.restarts += 1
        self._generation += 1
        ctx = get_context("spawn")
        for rank in range(self.size):
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=_rank_main,
                args=(
                    rank,
                    self.size,
                    self.backend,
                    self._store.port,
                    self._generation,
                    child_conn,
                    os.getpid(),
                    self._logdir,
                ),
                name=f"conformance-rank{rank}",
                daemon=True,
            )
            proc.start()
            child_conn.close()
            self._procs.append(proc)
            self._conns.append(parent_conn)
        try:
            self._collect(self.start_timeout, during_start=True)
            for fn, args in self.setup:
                for conn in self._conns:
                    conn.send_bytes(pickle.dumps((fn, args, {})))
                self._collect(self.start_timeout, during_start=True)
        except JobFailed as exc:
            self._kill()
            raise WorldUnavailable(f"world of {self.size} ({self.backend}) failed to start: {exc}") from None
        except BaseException:  # Ctrl-C while starting: no rank outlives it
            self._kill()
            raise

    def close(self, polite: bool = True) -> None:
        """Stop every rank (politely, then by force; by force at once unless ``polite``) and
        release the store."""
        if polite and self._procs and self.alive and not self._needs_health_check:
            try:
                for conn in self._conns:
                    conn.send_bytes(pickle.dumps((None, (), {})))
                deadline = time.monotonic() + 5.0
                for proc in self._procs:
                    proc.join(max(0.0, deadline - time.monotonic()))
            except (OSError, ValueError):
                pass
        self._kill()
        self._remove_logs()
        _live_worlds.discard(self)

    def _remove_logs(self) -> None:
        shutil.rmtree(self._logdir, ignore_errors=True)

    def restart(self) -> None:
        self._kill()
        self.start()

    def _kill(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(10)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        self._store = None
        self._needs_health_check = False

    def __enter__(self) -> World:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank; results in rank order."""
        payload = pickle.dumps((fn, args, kwargs))
        if self._procs and not self.alive:
            self._kill()
        if self._needs_health_check:
            self._check_health()
        self.start()
        for conn in self._conns:
            conn.send_bytes(payload)
        self.jobs_run += 1
        try:
            results = self._collect(self.job_timeout)
        except JobFailed as exc:
            if exc.kind == "error":
                # Ranks that raised may have left a collective half-done on the others.
                self._needs_health_check = bool(self._procs)
            else:
                self._kill()
            raise
        except BaseException:
            # Ctrl-C or another driver-side interruption mid-job: the ranks are mid-job too.
            self._kill()
            raise
        if any(_may_desync(r) for r in results):
            self._needs_health_check = True
        return results

    def _check_health(self) -> None:
        """After a job that raised, make sure the ranks still agree; restart if they don't."""
        self._needs_health_check = False
        payload = pickle.dumps((_health_check, (), {}))
        try:
            for conn in self._conns:
                conn.send_bytes(payload)
            self._collect(min(self.job_timeout, 10.0))
        except JobFailed:
            self._kill()

    def _collect(self, timeout: float, during_start: bool = False) -> list[Any]:
        results: dict[int, Any] = {}
        errors: dict[int, RankFailure] = {}
        waiting = {conn: rank for rank, conn in enumerate(self._conns)}
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        procs = self._procs
        watch = ProgressWatch(
            lambda rank: cpu_seconds(procs[rank].pid),
            range(self.size),
            cpu_budget=SLOW_ALLOWANCE_FACTOR * timeout,
        )
        deadline = time.monotonic() + timeout
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Past the deadline: wait on only while a silent rank is still computing.
                if watch.busy(waiting.values()):
                    deadline = time.monotonic() + watch.window
                    continue
                break
            ready = connection.wait([*waiting, *sentinels], remaining)
            for obj in ready:
                if obj in waiting:
                    rank = waiting.pop(obj)
                    try:
                        data = obj.recv_bytes()
                    except (EOFError, OSError):
                        continue  # the rank died; its sentinel tells
                    try:
                        status, value = pickle.loads(data)
                    except Exception as exc:
                        status, value = (
                            "err",
                            _failure_of(exc, "result could not be unpickled by the driver: "),
                        )
                    if status == "err":
                        errors[rank] = value
                    else:
                        results[rank] = value
                    if status == "err" or _may_desync(value):
                        # The others may be blocked in a collective this rank never joined:
                        # they get the grace, judged on what they do from now on.
                        deadline = min(deadline, time.monotonic() + self.error_grace)
                        watch.note(waiting.values())
            for obj in ready:
                died = sentinels.get(obj)
                if died is not None and died not in results and died not in errors:
                    dead = self._dead_ranks()
                    raise JobFailed(
                        "crash",
                        {
                            r: RankFailure("RankDied", self._describe_exit(r), self._stderr_tail(r))
                            for r in dead
                        }
                        | errors,
                        "world restarts before the next job",
                        results=results,
                    )
        returned_early = sorted(errors) + [r for r, v in results.items() if _may_desync(v)]
        if waiting and returned_early:
            blocked = sorted(waiting.values())
            stacks = self._stacks(blocked)
            self._kill()
            early = ", ".join(map(str, returned_early))
            for rank in blocked:
                errors[rank] = RankFailure(
                    "Blocked",
                    f"still blocked in a collective after rank(s) {early} returned",
                    stacks.get(rank, ""),
                )
            detail = f"rank(s) {', '.join(map(str, blocked))} were still blocked and the world was restarted"
            raise JobFailed("error", errors, detail, results=results)
        if errors:
            raise JobFailed("error", errors, results=results)
        if waiting:
            hung = sorted(waiting.values())
            stacks = self._stacks(hung)
            what = "start" if during_start else "job"
            raise JobFailed(
                "hang",
                {
                    r: RankFailure("Timeout", f"no answer within {timeout:g}s", stacks.get(r, ""))
                    for r in hung
                },
                f"{what} timed out; world restarts before the next job",
            )
        return [results[r] for r in range(self.size)]

    def _stacks(self, ranks: list[int]) -> dict[int, str]:
        """Where each of ``ranks`` is stuck: its threads' Python stacks (see conformance.faults)."""
        pids = {r: self._procs[r].pid for r in ranks if self._procs[r].is_alive()}
        return collect_stacks(pids, self._logdir, self._generation)

    def _stderr_tail(self, rank: int) -> str:
        tail = stderr_tail(self._logdir, self._generation, rank)
        return f"last lines on stderr:\n{tail}" if tail else ""

    def _dead_ranks(self) -> list[int]:
        time.sleep(0.05)  # let simultaneous deaths all register
        return [rank for rank, proc in enumerate(self._procs) if not proc.is_alive()]

    def _describe_exit(self, rank: int) -> str:
        code = self._procs[rank].exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"


def _may_desync(result: Any) -> bool:
    """A result may say it left its collectives unfinished (e.g. it caught an exception)."""
    return bool(getattr(result, "may_desync", False))


def check_nccl_available(size: int) -> None:
    """Raise :class:`WorldUnavailable` unless ``size`` CUDA devices and NCCL are present."""
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        raise WorldUnavailable("backend nccl needs CUDA GPUs; this machine has none (use gloo)")
    if not dist.is_nccl_available():
        raise WorldUnavailable("backend nccl is not available in this torch build (use gloo)")
    if torch.cuda.device_count() < size:
        raise WorldUnavailable(
            f"backend nccl with {size} ranks needs {size} GPUs; this machine has {torch.cuda.device_count()}"
        )
