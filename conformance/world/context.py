"""The rank side of a world: what a job running on a rank can ask about its world.

Either transport makes a process a rank by initialising the process group and then calling
:func:`install_context`; jobs (and ``replay --script`` ranks) ask :func:`context` for the
rank, the world size, the device and the cached meshes and groups. :func:`health_check` is the
job a driver runs after a job that may have left the ranks' collectives out of step.
"""

from __future__ import annotations

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


def health_check() -> None:
    """A collective on the default group, on every cached mesh dimension group and on every
    cached subgroup this rank belongs to (a raise inside a collective can leave any of them out
    of step, and the next collective on it would hang)."""
    import torch
    import torch.distributed as dist

    ctx = context()

    def all_reduce_ones(expected: int, what: str, group: Any = None) -> None:
        probe = torch.ones(1, device=ctx.device)
        dist.all_reduce(probe, group=group)
        if int(probe.item()) != expected:
            raise RuntimeError(f"health check: {what} all_reduce gave {probe.item()}")

    all_reduce_ones(ctx.world_size, "world")
    for mesh in ctx.meshes():
        for dim in range(mesh.ndim):
            all_reduce_ones(mesh.size(dim), f"mesh dim {dim}", mesh.get_group(dim))
    for ranks, group in ctx.groups():
        if ctx.rank in ranks:
            all_reduce_ones(len(ranks), f"group {ranks}", group)
