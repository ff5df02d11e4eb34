"""How a rank calls each utility: the live arguments of a case on this rank.

Each ``call_<utility>`` builds the positional and keyword arguments of one utility from the
case's specs (materialised deterministically for this rank), and names the arguments observed
after the call by their roots. The utility table (:mod:`conformance.utilities`) says which one
a utility uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from conformance.case import Case
from conformance.materialise import Builder, Materialised
from conformance.vocabulary import (
    COMPARED_ROOT,
    COPY_ROOT,
    FLAT_ROOT,
    FULL_ROOT,
    LOCAL_ROOT,
    ROOT,
    distributed_fulls,
    flatten_paths,
    object_path,
    pg_ranks,
)
from conformance.world import context


class TensorInfo(NamedTuple):
    """What ranks other than the source pass for a full tensor to ``broadcast_tensors``."""

    size: torch.Size
    dtype: torch.dtype


class CallContext:
    """Live inputs of one case on one rank, and helpers to turn JSON kwargs into objects."""

    def __init__(self, case: Case) -> None:
        self.case = case
        ctx = context()
        self.rank, self.device = ctx.rank, ctx.device
        self.builder_args = (ctx.rank, ctx.world_size, ctx.device, ctx.mesh)
        self.storages: dict[int, str] = {}
        self.inputs: list[torch.Tensor] = []  # alive until the outcome is observed

    def build(
        self,
        spec: Any,
        root: str,
        seed_offset: int = 0,
        meta_dtensors: bool = False,
        sharded_group: Any = None,
    ) -> Materialised:
        built = Builder(
            self.case.seed + seed_offset, *self.builder_args, root=root, sharded_group=sharded_group
        ).build(spec, meta_dtensors)
        for ptr, path in built.storages.items():
            self.storages.setdefault(ptr, path)
        self.inputs.extend(built.tensors)
        return built

    def device_kwarg(self) -> torch.device:
        return (
            self.device
            if self.case.kwarg("device", "rank") == "rank"
            else torch.device(self.case.kwarg("device"))
        )

    def pg_kwarg(self) -> Any:
        """``pg``: omitted / None -> default; "world" -> the default group object; "copy" ->
        a separate group over all ranks (a utility must use the group it is given)."""
        choice = self.case.kwarg("pg")
        if choice in (None, "none"):
            return None
        import torch.distributed as dist

        if choice == "world":
            return dist.group.WORLD
        return context().group(pg_ranks(choice, context().world_size))

    def sharded_group(self, pg: Any) -> Any:
        """The group the case's ShardedTensors live on: a subgroup ``pg``, else the default."""
        return pg if self.case.kwarg("pg") == "tail" else None

    def in_pg(self) -> bool:
        """Whether this rank belongs to the case's ``pg`` (every rank for the default)."""
        return self.rank in pg_ranks(self.case.kwarg("pg"), context().world_size)


@dataclass
class Call:
    """One rank's call: its positional and keyword arguments, and the arguments observed after
    it (root -> live value); ``args`` is None where this rank makes no call (outside ``pg``)."""

    args: tuple[Any, ...] | None
    kwargs: dict[str, Any]
    arguments: dict[str, Any]


def call_gather(c: CallContext) -> Call:
    """A subgroup ``pg`` also holds the tree's ShardedTensors; its non-members do not call."""
    pg = c.pg_kwarg()
    if not c.in_pg():
        return Call(None, {}, {})
    sd = c.build(c.case.state_dict, ROOT, sharded_group=c.sharded_group(pg)).value
    kwargs = c.case.call_kwargs()
    kwargs.pop("pg", None)
    kwargs.pop("device", None)
    if c.case.kwarg("pg") is not None:
        kwargs["pg"] = pg
    return Call((sd,), kwargs, {ROOT: sd})


def call_one_tree(c: CallContext) -> Call:
    """The state dict and the case's keyword arguments as they are."""
    sd = c.build(c.case.state_dict, ROOT).value
    return Call((sd,), c.case.call_kwargs(), {ROOT: sd})


def call_copy(c: CallContext) -> Call:
    sd = c.build(c.case.state_dict, ROOT).value
    dest = c.build(c.case.other, COPY_ROOT, seed_offset=1).value
    return Call((sd, dest), c.case.call_kwargs(), {ROOT: sd, COPY_ROOT: dest})


def call_similarity(c: CallContext) -> Call:
    sd = c.build(c.case.state_dict, ROOT).value
    other = c.build(c.case.other, COMPARED_ROOT, seed_offset=1).value
    return Call((sd, other), {}, {ROOT: sd, COMPARED_ROOT: other})


def _full_and_local(c: CallContext, only_rank0: bool) -> tuple[dict, dict]:
    full = c.build(c.case.state_dict, FULL_ROOT).value
    if only_rank0 and c.rank != pg_ranks(c.case.kwarg("pg"), context().world_size)[0]:
        full = {}  # only the group's rank 0 holds the full state dict
    local = c.build(c.case.other, LOCAL_ROOT, seed_offset=1, meta_dtensors=bool(c.case.kwarg("meta"))).value
    return full, local


def call_broadcast_state_dict(c: CallContext) -> Call:
    full, local = _full_and_local(c, only_rank0=True)
    kwargs = {k: v for k, v in c.case.call_kwargs().items() if k in ("strict", "cpu_offload")}
    device, pg = c.device_kwarg(), c.pg_kwarg()
    arguments = {FULL_ROOT: full, LOCAL_ROOT: local}
    if not c.in_pg():
        return Call(None, {}, arguments)  # not a member: no call
    return Call((full, local), {"device": device, "pg": pg, **kwargs}, arguments)


def call_distribute_state_dict(c: CallContext) -> Call:
    full, local = _full_and_local(c, only_rank0=False)
    kwargs = {"device": c.device_kwarg(), "pg": c.pg_kwarg()}
    return Call((full, local), kwargs, {FULL_ROOT: full, LOCAL_ROOT: local})


def call_broadcast_tensors(c: CallContext) -> Call:
    """Group rank 0 passes the full tensors, the other members their size and dtype; ranks
    outside the group do not call."""
    full, local = _full_and_local(c, only_rank0=False)
    keys = list(c.case.kwarg("keys", ()))
    source = c.rank == pg_ranks(c.case.kwarg("pg"), context().world_size)[0]
    if not source:
        full = {k: TensorInfo(v.size(), v.dtype) if torch.is_tensor(v) else v for k, v in full.items()}
    device, pg = c.device_kwarg(), c.pg_kwarg()
    arguments = {LOCAL_ROOT: local} | ({FULL_ROOT: full} if source else {})
    if not c.in_pg():
        return Call(None, {}, arguments)  # not a member: no call
    return Call((full, local, keys, device, pg), {}, arguments)


def call_distribute_tensors(c: CallContext) -> Call:
    """``state_dict`` holds local DTensors and plain tensors; each DTensor named in ``keys`` is
    paired with its full tensor (:func:`distributed_fulls`, values drawn under the
    ``full_state_dict`` root), other entries and absent keys are passed as they are."""
    from torch.distributed.tensor import DTensor

    local = c.build(c.case.state_dict, LOCAL_ROOT, meta_dtensors=bool(c.case.kwarg("meta"))).value
    full = c.build(distributed_fulls(c.case), FULL_ROOT, seed_offset=1).value
    keys = list(c.case.kwarg("keys", ()))
    for key in keys:
        if isinstance(local.get(key), DTensor):
            local[key] = (local[key], full[key])
    return Call((local, keys, c.device_kwarg(), c.pg_kwarg()), {}, {LOCAL_ROOT: local})


def call_flatten(c: CallContext) -> Call:
    sd = c.build(c.case.state_dict, ROOT).value
    return Call((sd,), {}, {ROOT: sd})


def call_unflatten(c: CallContext) -> Call:
    """The flat dict and mapping are computed here from the nested input (not by the target)."""
    sd = c.build(c.case.state_dict, ROOT).value
    flat, mapping = {}, {}
    for fqn, path in flatten_paths(c.case.state_dict):
        value = sd
        for key in path:
            value = value[key]
        flat[fqn] = value
        mapping[fqn] = object_path(c.case.state_dict, path)
    return Call((flat, mapping), {}, {FLAT_ROOT: flat})


def call_all_gather_sharded(c: CallContext) -> Call:
    """A subgroup ``pg`` (``"tail"``) also holds the ShardedTensor; its non-members do not call.
    Every rank makes the group first (``new_group`` is collective over all ranks)."""
    pg = c.pg_kwarg()
    if not c.in_pg():
        return Call(None, {}, {})
    st = c.build(c.case.state_dict, ROOT, sharded_group=c.sharded_group(pg)).value
    kwargs = {"pg": pg} if c.case.kwarg("pg") is not None else {}
    return Call((st,), kwargs, {ROOT: st})
