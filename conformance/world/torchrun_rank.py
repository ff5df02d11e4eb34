"""Every rank's membership of a torchrun world: process group, control store, watchdog.

The control channel is the c10d store of torchrun's default process group (under a private
prefix), never a process group: job ``n`` is the pickled job under ``job/<n>``; a rank
answers under ``result/<n>/<rank>`` and adds 1 to ``done/<n>`` (plus :data:`EARLY` when it
returned early). A watchdog thread on its own store connection bumps ``beat/<rank>`` and
publishes ``cpu/<rank>`` every :data:`HEARTBEAT_INTERVAL` seconds, writes the rank's stacks
under ``stack/<n>/<rank>`` when the driver asks (``dump/<n>``), and on ranks other than 0 exits
on ``stop`` or when rank 0 is gone: the store unreachable, rank 0's process gone where it runs
on this host, or else its heartbeat still for :data:`DRIVER_LOST_AFTER` seconds. Ranks other
than 0 run :func:`serve_forever`.

A heartbeat is a Python thread's: it needs the GIL, and a busy process on a loaded machine can
keep it from its thread for seconds (7.6 s measured on rank 1 while it imported
``torch._dynamo``, 2 cores at load 8). So a rank on the same host as its peer is judged alive by
its process (:func:`local_pid`, :func:`process_alive`), never by its beats; beats judge only
ranks on other hosts.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import warnings
from datetime import timedelta
from typing import Any

from conformance.faults import own_stacks
from conformance.world.context import install_context
from conformance.world.limits import BACKENDS
from conformance.world.protocol import WorldUnavailable, execute

HEARTBEAT_INTERVAL = 0.5
DRIVER_LOST_AFTER = float(os.environ.get("SDC_TORCHRUN_DRIVER_LOST_AFTER", "30"))
EARLY = 1 << 20  # added to done/<n> by a rank that raised or may have desynced
_FOREVER = timedelta(days=3650)
_ELSEWHERE = -1  # the process id of a rank on another host: judged by its heartbeat


def local_pid(store: Any, rank: int) -> int | None:
    """The process id of ``rank`` if it runs on this host (its ``where/<rank>``), else None
    (another host, or not joined yet: never waits for the key)."""
    key = f"where/{rank}"
    try:
        if not store.check([key]):
            return None
        host, pid = store.get(key).decode().rsplit(":", 1)
    except Exception:
        return None
    return int(pid) if host == socket.gethostname() else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def say(text: str) -> None:
    """One line on stderr, at once (ranks of other nodes have no other voice)."""
    print(text, file=sys.stderr, flush=True)


class TorchrunMember:
    """This process's membership of the torchrun world: process group, store, watchdog."""

    def __init__(self, backend: str) -> None:
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise WorldUnavailable(
                f"not started by torchrun ({', '.join(missing)} unset): use "
                "`torchrun --nproc-per-node N -m conformance.torchrun ...`"
            )
        if backend not in BACKENDS:
            raise WorldUnavailable(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        import torch
        import torch.distributed as dist

        warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
        self.rank = int(os.environ["RANK"])
        self.size = int(os.environ["WORLD_SIZE"])
        self.backend = backend
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise WorldUnavailable("backend nccl needs CUDA GPUs; this node has none (use gloo)")
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend, device_id=self.device if backend == "nccl" else None)
        install_context(self.rank, self.size, backend, self.device)
        from torch.distributed.distributed_c10d import _get_default_store

        prefix = f"sdc-torchrun/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.store = dist.PrefixStore(prefix, _get_default_store())
        self.busy = 0  # the job this rank is executing, 0 when idle
        self.awaited = 1  # the job this rank runs next (or runs now)
        self.closing = False
        self.store.set(f"where/{self.rank}", f"{socket.gethostname()}:{os.getpid()}")
        self.store.add(f"beat/{self.rank}", 1)
        self.store.add("joined", 1)
        threading.Thread(
            target=self._watchdog,
            args=(self.store.clone(),),  # type: ignore[attr-defined]  # missing from torch's stubs
            daemon=True,
            name="sdc-torchrun-watchdog",
        ).start()

    def _watchdog(self, store: Any) -> None:
        """Heartbeat; on ranks other than 0 also: exit on ``stop`` or when rank 0 is gone."""
        last_beat0, changed, errors, dumped = -1, time.monotonic(), 0, 0
        driver_pid: int | None = None  # rank 0's process once joined (_ELSEWHERE: another host)
        while not self.closing:
            try:
                store.add(f"beat/{self.rank}", 1)
                store.set(f"cpu/{self.rank}", repr(time.process_time()))
                busy, awaited = self.busy, self.awaited
                if awaited != dumped and store.check([f"dump/{awaited}"]):  # where this rank is stuck
                    stacks = own_stacks() if busy else f"job {awaited} never reached this rank\n"
                    store.set(f"stack/{awaited}/{self.rank}", stacks)
                    dumped = awaited
                if self.rank != 0:
                    if store.check(["stop"]):
                        reason = store.get("stop").decode()
                        if self.closing:
                            return
                        if self.busy:
                            say(
                                f"rank {self.rank}: job {self.busy} still running when the run stopped ({reason})"
                            )
                        os._exit(1 if self.busy else 0)
                    if driver_pid is None and store.check(["where/0"]):
                        driver_pid = local_pid(store, 0) or _ELSEWHERE
                    if driver_pid is None:  # rank 0 has not joined yet: nothing to judge
                        changed = time.monotonic()
                    elif driver_pid != _ELSEWHERE:
                        if not process_alive(driver_pid):
                            say(f"rank {self.rank}: rank 0 (process {driver_pid}) is gone; exiting")
                            os._exit(3)
                    elif (beat0 := store.add("beat/0", 0)) != last_beat0:
                        last_beat0, changed = beat0, time.monotonic()
                    elif time.monotonic() - changed > DRIVER_LOST_AFTER:
                        say(f"rank {self.rank}: no heartbeat from rank 0 for {DRIVER_LOST_AFTER:g}s; exiting")
                        os._exit(3)
                errors = 0
            except Exception as exc:
                if self.closing:
                    return
                errors += 1
                if errors >= 3 and self.rank != 0:
                    say(
                        f"rank {self.rank}: the torchrun store is unreachable ({exc}); rank 0 is gone, exiting"
                    )
                    os._exit(3)
            time.sleep(HEARTBEAT_INTERVAL)

    def leave(self) -> None:
        """Clean end: a barrier (gloo can abort when a group is destroyed while a peer talks),
        then destroy the process group."""
        import torch.distributed as dist

        self.closing = True
        dist.barrier()
        dist.destroy_process_group()


def serve_forever(backend: str | None = None) -> int:
    """Ranks other than 0: receive a job, run it, send the result back, until shutdown."""
    member = TorchrunMember(backend or os.environ.get("SDC_BACKEND", "gloo"))
    if member.rank == 0:
        raise RuntimeError("serve_forever() is for ranks other than 0; rank 0 drives a TorchrunWorld")
    store, job = member.store, 1
    while True:
        key = f"job/{job}"
        try:
            store.wait([key], _FOREVER)
            payload = store.get(key)
        except Exception as exc:
            if member.closing:
                return 0
            say(f"rank {member.rank}: lost the torchrun store ({exc}); exiting")
            return 3
        member.busy = job
        answer = execute(payload)
        if answer is None:  # shutdown: acknowledge, then meet the others
            member.closing = True
            store.add(f"done/{job}", 1)
            member.leave()
            return 0
        store.set(f"result/{job}/{member.rank}", answer.data)  # type: ignore[arg-type]  # stubs say str; bytes work
        store.add(f"done/{job}", 1 + (EARLY if answer.early else 0))
        job += 1
        member.awaited = job
        member.busy = 0
