"""The rank side of a world: what a job running on a rank can ask about its world.

Either transport makes a process a rank by initialising the process group and then calling
:func:`install_context`; jobs (and ``replay --script`` ranks) ask :func:`context` for the
rank, the world size, the device and the cached meshes and groups. :func:`health_check` is the
job a driver runs after a job that may have left the ranks' collectives out of step.

Every rank builds the same meshes and groups in the same order (building one is collective), so
their cached order is the same on every rank: a health check relies on it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RankContext:
    """What a job running on a rank can ask about its world."""

    rank: int
    world_size: int
    backend: str
    device: Any  # torch.device
    _meshes: dict[tuple[int, ...], Any] = field(default_factory=dict)
    _groups: dict[tuple[int, ...], Any] = field(default_factory=dict)
    # meshes ("mesh", shape) and groups ("group", ranks) handed out since the last health check
    _used: set[tuple[str, tuple[int, ...]]] = field(default_factory=set)

    def mesh(self, shape: tuple[int, ...]) -> Any:
        """The DeviceMesh of ``shape`` over all ranks, built once per world and cached."""
        shape = tuple(int(s) for s in shape)
        if shape not in self._meshes:
            from torch.distributed.device_mesh import init_device_mesh

            names = tuple(f"d{i}" for i in range(len(shape)))
            self._meshes[shape] = init_device_mesh(self.device.type, shape, mesh_dim_names=names)
        self._used.add(("mesh", shape))
        return self._meshes[shape]

    def group(self, ranks: tuple[int, ...]) -> Any:
        """A process group over ``ranks`` (every rank must ask), built once and cached."""
        ranks = tuple(int(r) for r in ranks)
        if ranks not in self._groups:
            import torch.distributed as dist

            self._groups[ranks] = dist.new_group(list(ranks))
        self._used.add(("group", ranks))
        return self._groups[ranks]


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


def health_check() -> list[str]:
    """A collective on the default group, then on every group a job may have used since the last
    health check: the dimension groups of the meshes and the subgroups handed out since then
    (:meth:`RankContext.mesh`, :meth:`RankContext.group`) on any rank. A raise inside a
    collective can leave any of those out of step, and the next collective on it would hang or
    abort; a group no job touched since the last check is as the last check left it. Groups of
    one rank and groups already probed (a 1-D mesh over the world uses the default group) are
    skipped. Raises where the ranks hold different meshes or groups (a mesh that needs no new
    group, a 1-D one over the world, is built without a collective). Returns what it probed, in
    order (the same on every rank)."""
    import torch
    import torch.distributed as dist

    ctx = context()
    cached = [("mesh", shape) for shape in ctx._meshes] + [("group", ranks) for ranks in ctx._groups]
    # first the default group, and whether every rank holds the same meshes and groups
    digest = zlib.crc32(repr(cached).encode())
    probe = torch.tensor([1, len(cached), digest], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(probe)
    if int(probe[0].item()) != ctx.world_size:
        raise RuntimeError(f"health check: world all_reduce gave {probe[0].item()}")
    if probe[1:].tolist() != [ctx.world_size * len(cached), ctx.world_size * digest]:
        raise RuntimeError("health check: the ranks hold different meshes or groups")
    # then what any rank used since the last check
    used = torch.tensor([float(key in ctx._used) for key in cached], device=ctx.device)
    if cached:
        dist.all_reduce(used)
    ctx._used.clear()
    probed = ["world"]
    seen = {dist.distributed_c10d._get_default_group().group_name}

    def all_reduce_ones(size: int, what: str, group: Any) -> None:
        if size < 2 or group.group_name in seen:
            return
        seen.add(group.group_name)
        ones = torch.ones(1, device=ctx.device)
        dist.all_reduce(ones, group=group)
        if int(ones.item()) != size:
            raise RuntimeError(f"health check: {what} all_reduce gave {ones.item()}")
        probed.append(what)

    for (kind, key), anyone in zip(cached, used.tolist(), strict=True):
        if not anyone:
            continue
        if kind == "mesh":
            mesh = ctx._meshes[key]
            for dim in range(mesh.ndim):
                all_reduce_ones(mesh.size(dim), f"mesh {key} dim {dim}", mesh.get_group(dim))
        elif ctx.rank in key:
            all_reduce_ones(len(key), f"group {key}", ctx._groups[key])
    return probed
