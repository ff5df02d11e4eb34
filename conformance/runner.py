"""The rank side of a case: materialise inputs, call the target's utility, observe everything.

``run_case`` is a world job: every rank executes it and returns an :class:`Outcome`. An
exception from the target becomes a ``RaisedObs`` result (and marks the outcome
``may_desync`` so the world keeps other ranks from waiting forever).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from conformance.case import Case
from conformance.materialise import Builder, Materialised
from conformance.observation import Observer, Outcome, RaisedObs
from conformance.targets import load_target
from conformance.world import context

# Roots of the arguments as they appear in paths and messages.
ROOT = "state_dict"
OTHER_ROOTS = {
    "copy_state_dict": "copy_state_dict",
    "check_state_dict_similarity": "compared_state_dict",
    "broadcast_state_dict": "local_state_dict",
    "distribute_state_dict": "local_state_dict",
    "broadcast_tensors": "local_state_dict",
}
FULL_ROOT = "full_state_dict"


class TensorInfo(NamedTuple):
    """What ranks other than the source pass for a full tensor to ``broadcast_tensors``."""

    size: torch.Size
    dtype: torch.dtype


def first_root(case: Case) -> str:
    return (
        FULL_ROOT
        if case.utility in ("broadcast_state_dict", "distribute_state_dict", "broadcast_tensors")
        else ROOT
    )


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


def pg_ranks(choice: str | None, world_size: int) -> tuple[int, ...]:
    """Global ranks of a ``pg`` kwarg: "tail" is every rank but 0, so its group rank 0 is
    global rank 1; anything else is every rank."""
    return tuple(range(1, world_size)) if choice == "tail" else tuple(range(world_size))


def _call_gather(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    """A subgroup ``pg`` also holds the tree's ShardedTensors; its non-members do not call."""
    pg = c.pg_kwarg()
    if not c.in_pg():
        return (lambda: None), {}
    sd = c.build(c.case.state_dict, ROOT, sharded_group=c.sharded_group(pg)).value
    kwargs = c.case.call_kwargs()
    kwargs.pop("pg", None)
    kwargs.pop("device", None)
    if c.case.kwarg("pg") is not None:
        kwargs["pg"] = pg
    return (lambda: fn(sd, **kwargs)), {ROOT: sd}


def _call_offload(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    sd = c.build(c.case.state_dict, ROOT).value
    return (lambda: fn(sd, **c.case.call_kwargs())), {ROOT: sd}


def _call_copy(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    sd = c.build(c.case.state_dict, ROOT).value
    dest = c.build(c.case.other, "copy_state_dict", seed_offset=1).value
    return (lambda: fn(sd, dest, **c.case.call_kwargs())), {ROOT: sd, "copy_state_dict": dest}


def _call_create_cpu(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    sd = c.build(c.case.state_dict, ROOT).value
    return (lambda: fn(sd, **c.case.call_kwargs())), {ROOT: sd}


def _call_similarity(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    sd = c.build(c.case.state_dict, ROOT).value
    other = c.build(c.case.other, "compared_state_dict", seed_offset=1).value
    return (lambda: fn(sd, other)), {ROOT: sd, "compared_state_dict": other}


def _full_and_local(c: CallContext, only_rank0: bool) -> tuple[dict, dict]:
    full = c.build(c.case.state_dict, FULL_ROOT).value
    if only_rank0 and c.rank != pg_ranks(c.case.kwarg("pg"), context().world_size)[0]:
        full = {}  # only the group's rank 0 holds the full state dict
    local = c.build(
        c.case.other, "local_state_dict", seed_offset=1, meta_dtensors=bool(c.case.kwarg("meta"))
    ).value
    return full, local


def _call_broadcast_state_dict(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    full, local = _full_and_local(c, only_rank0=True)
    kwargs = {k: v for k, v in c.case.call_kwargs().items() if k in ("strict", "cpu_offload")}
    device, pg = c.device_kwarg(), c.pg_kwarg()
    if not c.in_pg():
        return (lambda: None), {FULL_ROOT: full, "local_state_dict": local}  # not a member: no call
    return (lambda: fn(full, local, device=device, pg=pg, **kwargs)), {
        FULL_ROOT: full,
        "local_state_dict": local,
    }


def _call_distribute_state_dict(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    full, local = _full_and_local(c, only_rank0=False)
    device, pg = c.device_kwarg(), c.pg_kwarg()
    return (lambda: fn(full, local, device=device, pg=pg)), {
        FULL_ROOT: full,
        "local_state_dict": local,
    }


def _call_broadcast_tensors(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Group rank 0 passes the full tensors, the other members their size and dtype; ranks
    outside the group do not call."""
    full, local = _full_and_local(c, only_rank0=False)
    keys = list(c.case.kwarg("keys", ()))
    source = c.rank == pg_ranks(c.case.kwarg("pg"), context().world_size)[0]
    if not source:
        full = {k: TensorInfo(v.size(), v.dtype) if torch.is_tensor(v) else v for k, v in full.items()}
    device, pg = c.device_kwarg(), c.pg_kwarg()
    arguments = {"local_state_dict": local} | ({FULL_ROOT: full} if source else {})
    if not c.in_pg():
        return (lambda: None), arguments  # not a member: no call
    return (lambda: fn(full, local, keys, device, pg)), arguments


def _call_distribute_tensors(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    """``state_dict`` holds local DTensors and plain tensors; each DTensor named in ``keys`` is
    paired with its full tensor (:func:`distributed_fulls`, values drawn under the
    ``full_state_dict`` root), other entries and absent keys are passed as they are."""
    from torch.distributed.tensor import DTensor

    local = c.build(c.case.state_dict, "local_state_dict", meta_dtensors=bool(c.case.kwarg("meta"))).value
    full = c.build(distributed_fulls(c.case), FULL_ROOT, seed_offset=1).value
    keys = list(c.case.kwarg("keys", ()))
    for key in keys:
        if isinstance(local.get(key), DTensor):
            local[key] = (local[key], full[key])
    device, pg = c.device_kwarg(), c.pg_kwarg()
    return (lambda: fn(local, keys, device, pg)), {"local_state_dict": local}


def distributed_fulls(case: Any) -> Any:
    """The full tensors a ``distribute_tensors`` case pairs with its DTensors: ``case.other``
    where the case gives them (a shape may differ), else each DTensor's global tensor."""
    return case.other if case.other is not None else global_specs(case.state_dict)


def global_specs(spec: Any) -> Any:
    """The flat dict of plain tensor specs standing for each DTensor leaf's global tensor."""
    from strategies.spec import DictSpec, DTensorSpec

    return DictSpec(
        tuple((k, v.tensor if isinstance(v, DTensorSpec) else v) for k, v in spec.items), spec.kind
    )


def _call_flatten(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    sd = c.build(c.case.state_dict, ROOT).value
    return (lambda: fn(sd)), {ROOT: sd}


def _call_unflatten(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The flat dict and mapping are computed here from the nested input (not by the target)."""
    from conformance.oracle.expect import flatten_paths, object_path

    sd = c.build(c.case.state_dict, ROOT).value
    flat, mapping = {}, {}
    for fqn, path in flatten_paths(c.case.state_dict):
        value = sd
        for key in path:
            value = value[key]
        flat[fqn] = value
        mapping[fqn] = object_path(c.case.state_dict, path)
    return (lambda: fn(flat, mapping)), {"flat_state_dict": flat}


def _call_all_gather_sharded(c: CallContext, fn: Callable) -> tuple[Callable[[], Any], dict[str, Any]]:
    """A subgroup ``pg`` (``"tail"``) also holds the ShardedTensor; its non-members do not call.
    Every rank makes the group first (``new_group`` is collective over all ranks)."""
    pg = c.pg_kwarg()
    if not c.in_pg():
        return (lambda: None), {}
    st = c.build(c.case.state_dict, ROOT, sharded_group=c.sharded_group(pg)).value
    kwargs = {}
    if c.case.kwarg("pg") is not None:
        kwargs["pg"] = pg
    return (lambda: fn(st, **kwargs)), {ROOT: st}


CALLS: dict[str, Callable[[CallContext, Callable], tuple[Callable[[], Any], dict[str, Any]]]] = {
    "gather_state_dict": _call_gather,
    "offload_state_dict_to_cpu": _call_offload,
    "copy_state_dict": _call_copy,
    "create_cpu_state_dict": _call_create_cpu,
    "check_state_dict_similarity": _call_similarity,
    "distribute_tensors": _call_distribute_tensors,
    "broadcast_tensors": _call_broadcast_tensors,
    "broadcast_state_dict": _call_broadcast_state_dict,
    "distribute_state_dict": _call_distribute_state_dict,
    "flatten_state_dict": _call_flatten,
    "unflatten_state_dict": _call_unflatten,
    "all_gather_sharded_tensor": _call_all_gather_sharded,
}


def run_case(case: Case, target_name: str) -> Outcome:
    """World job: call ``case.utility`` of the target on this rank and observe the outcome."""
    fn = load_target(target_name).function(case.utility)
    if fn is None:
        raise LookupError(f"target {target_name!r} has no {case.utility}")
    c = CallContext(case)
    call, arguments = CALLS[case.utility](c, fn)
    observer = Observer(c.storages)
    observer.remember_inputs(arguments)
    try:
        result = call()
    except Exception as exc:
        mutated = {name: observer.observe_argument(value) for name, value in arguments.items()}
        return Outcome(RaisedObs(type(exc).__name__, str(exc)), mutated, may_desync=True)
    observed = observer.observe_result(result)
    return Outcome(observed, {name: observer.observe_argument(v) for name, v in arguments.items()})
