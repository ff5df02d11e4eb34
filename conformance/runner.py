"""The rank side of a case: materialise inputs, call the target's utility, observe everything.

``run_case`` is a world job: every rank executes it and returns an :class:`Outcome`. An
exception from the target becomes a ``RaisedObs`` result (and marks the outcome
``may_desync`` so the world keeps other ranks from waiting forever).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from conformance.case import Case
from conformance.faults import target_traceback
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


@dataclass
class Call:
    """One rank's call: its positional and keyword arguments, and the arguments observed after
    it (root -> live value); ``args`` is None where this rank makes no call (outside ``pg``)."""

    args: tuple[Any, ...] | None
    kwargs: dict[str, Any]
    arguments: dict[str, Any]


def _call_gather(c: CallContext) -> Call:
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


def _call_one_tree(c: CallContext) -> Call:
    """The state dict and the case's keyword arguments as they are."""
    sd = c.build(c.case.state_dict, ROOT).value
    return Call((sd,), c.case.call_kwargs(), {ROOT: sd})


def _call_copy(c: CallContext) -> Call:
    sd = c.build(c.case.state_dict, ROOT).value
    dest = c.build(c.case.other, "copy_state_dict", seed_offset=1).value
    return Call((sd, dest), c.case.call_kwargs(), {ROOT: sd, "copy_state_dict": dest})


def _call_similarity(c: CallContext) -> Call:
    sd = c.build(c.case.state_dict, ROOT).value
    other = c.build(c.case.other, "compared_state_dict", seed_offset=1).value
    return Call((sd, other), {}, {ROOT: sd, "compared_state_dict": other})


def _full_and_local(c: CallContext, only_rank0: bool) -> tuple[dict, dict]:
    full = c.build(c.case.state_dict, FULL_ROOT).value
    if only_rank0 and c.rank != pg_ranks(c.case.kwarg("pg"), context().world_size)[0]:
        full = {}  # only the group's rank 0 holds the full state dict
    local = c.build(
        c.case.other, "local_state_dict", seed_offset=1, meta_dtensors=bool(c.case.kwarg("meta"))
    ).value
    return full, local


def _call_broadcast_state_dict(c: CallContext) -> Call:
    full, local = _full_and_local(c, only_rank0=True)
    kwargs = {k: v for k, v in c.case.call_kwargs().items() if k in ("strict", "cpu_offload")}
    device, pg = c.device_kwarg(), c.pg_kwarg()
    arguments = {FULL_ROOT: full, "local_state_dict": local}
    if not c.in_pg():
        return Call(None, {}, arguments)  # not a member: no call
    return Call((full, local), {"device": device, "pg": pg, **kwargs}, arguments)


def _call_distribute_state_dict(c: CallContext) -> Call:
    full, local = _full_and_local(c, only_rank0=False)
    kwargs = {"device": c.device_kwarg(), "pg": c.pg_kwarg()}
    return Call((full, local), kwargs, {FULL_ROOT: full, "local_state_dict": local})


def _call_broadcast_tensors(c: CallContext) -> Call:
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
        return Call(None, {}, arguments)  # not a member: no call
    return Call((full, local, keys, device, pg), {}, arguments)


def _call_distribute_tensors(c: CallContext) -> Call:
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
    return Call((local, keys, c.device_kwarg(), c.pg_kwarg()), {}, {"local_state_dict": local})


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


def _call_flatten(c: CallContext) -> Call:
    sd = c.build(c.case.state_dict, ROOT).value
    return Call((sd,), {}, {ROOT: sd})


def _call_unflatten(c: CallContext) -> Call:
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
    return Call((flat, mapping), {}, {"flat_state_dict": flat})


def _call_all_gather_sharded(c: CallContext) -> Call:
    """A subgroup ``pg`` (``"tail"``) also holds the ShardedTensor; its non-members do not call.
    Every rank makes the group first (``new_group`` is collective over all ranks)."""
    pg = c.pg_kwarg()
    if not c.in_pg():
        return Call(None, {}, {})
    st = c.build(c.case.state_dict, ROOT, sharded_group=c.sharded_group(pg)).value
    kwargs = {"pg": pg} if c.case.kwarg("pg") is not None else {}
    return Call((st,), kwargs, {ROOT: st})


@dataclass(frozen=True)
class RankCall:
    """How a rank calls one utility: ``build`` makes the live :class:`Call` of a case, and
    ``params`` names its positional arguments (as ``replay --script`` writes the call)."""

    build: Callable[[CallContext], Call]
    params: tuple[str, ...]


CALLS: dict[str, RankCall] = {
    "gather_state_dict": RankCall(_call_gather, ("state_dict",)),
    "offload_state_dict_to_cpu": RankCall(_call_one_tree, ("state_dict",)),
    "copy_state_dict": RankCall(_call_copy, ("state_dict", "copy_state_dict")),
    "create_cpu_state_dict": RankCall(_call_one_tree, ("state_dict",)),
    "check_state_dict_similarity": RankCall(_call_similarity, ("state_dict", "compared_state_dict")),
    "distribute_tensors": RankCall(_call_distribute_tensors, ("local_state_dict", "keys", "device", "pg")),
    "broadcast_tensors": RankCall(
        _call_broadcast_tensors, ("full_state_dict", "local_state_dict", "keys", "device", "pg")
    ),
    "broadcast_state_dict": RankCall(_call_broadcast_state_dict, ("full_state_dict", "local_state_dict")),
    "distribute_state_dict": RankCall(_call_distribute_state_dict, ("full_state_dict", "local_state_dict")),
    "flatten_state_dict": RankCall(_call_flatten, ("state_dict",)),
    "unflatten_state_dict": RankCall(_call_unflatten, ("flat_state_dict", "mapping")),
    "all_gather_sharded_tensor": RankCall(_call_all_gather_sharded, ("sharded_tensor",)),
}


class LiveCall:
    """One rank's side of a case before and after the call: the live inputs, built exactly as
    every run builds them (``args``, ``kwargs``; ``args`` None where this rank makes no call),
    then the outcome observed from what the call returned or raised."""

    def __init__(self, case: Case) -> None:
        self._context = CallContext(case)  # keeps the inputs alive until they are observed
        self.call = CALLS[case.utility].build(self._context)
        self.args, self.kwargs = self.call.args, self.call.kwargs
        self._observer = Observer(self._context.storages)
        self._observer.remember_inputs(self.call.arguments)

    def _arguments(self) -> dict[str, Any]:
        return {name: self._observer.observe_argument(v) for name, v in self.call.arguments.items()}

    def returned(self, result: Any) -> Outcome:
        """The outcome of a call that returned ``result`` (None where no call was made)."""
        return Outcome(self._observer.observe_result(result), self._arguments())

    def raised(self, exc: BaseException, target_file: str) -> Outcome:
        """The outcome of a call that raised ``exc``, with the target's frames of its traceback."""
        raised = RaisedObs(type(exc).__name__, str(exc), target_traceback(exc, target_file))
        return Outcome(raised, self._arguments(), may_desync=True)


def run_case(case: Case, target_name: str) -> Outcome:
    """World job: call ``case.utility`` of the target on this rank and observe the outcome."""
    target = load_target(target_name)
    fn = target.function(case.utility)
    if fn is None:
        raise LookupError(f"target {target_name!r} has no {case.utility}")
    inputs = LiveCall(case)
    if inputs.args is None:
        return inputs.returned(None)
    try:
        result = fn(*inputs.args, **inputs.kwargs)
    except Exception as exc:
        return inputs.raised(exc, target.file)
    return inputs.returned(result)
