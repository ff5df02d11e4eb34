"""Oracle of the loads: CONTRACT broadcast_state_dict, distribute_state_dict, broadcast_tensors
and distribute_tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import torch

from conformance.case import Case
from conformance.observation import (
    ANY,
    Container,
    Outcome,
    RaisedObs,
)
from conformance.oracle.common import (
    NONE,
    device_type_of,
    full_items_of,
    local_items_of,
    other_spec,
    rank_inputs,
)
from conformance.oracle.inputs import (
    RankInputs,
    map_spec,
    tensor_obs,
    value_obs,
)
from conformance.vocabulary import (
    FULL_ROOT,
    distributed_fulls,
    pg_ranks,
)
from strategies.placements import coordinate_of, split_over_mesh
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    Key,
    Leaf,
    Path,
    TensorSpec,
    ValueSpec,
    format_path,
)


def loaded_piece(full: torch.Tensor, leaf: DTensorSpec, rank: int) -> torch.Tensor:
    """The piece of ``full`` a rank's DTensor holds after loading (CONTRACT, *DTensor pieces*):
    sharding dims as the placement models split; a Partial dim reduces back to ``full``
    exactly (sum, bxor: coordinate 0 holds it, the others zeros; product: ones; else all
    hold it)."""
    coord = coordinate_of(rank, leaf.mesh_shape)
    piece = full
    for index, (n, placement) in enumerate(zip(leaf.mesh_shape, leaf.placements, strict=True)):
        if placement.kind == "partial":
            op = placement.param("reduce_op")
            if coord[index] != 0 and op in ("sum", "bxor"):
                piece = torch.zeros_like(piece)
            elif coord[index] != 0 and op == "product":
                piece = torch.ones_like(piece)
            continue
        parts = split_over_mesh(piece, (n,), (placement,), torch.Generator().manual_seed(0))
        piece = parts[(coord[index],)]
    return piece.contiguous()


def _device_arg_type(case: Case) -> str:
    """The device type of a loading utility's ``device`` argument ("rank": the rank's own)."""
    device = case.kwarg("device", "rank")
    return device_type_of(case) if device == "rank" else torch.device(device).type


#: A pseudo keyword argument for known divergences' ``as_if``: ``contract_checks=False`` judges a
#: load that returned instead of raising as if the contract checked nothing; the entries the
#: failed checks are about are then unspecified, every other entry must load as the contract says.
CONTRACT_CHECKS = "contract_checks"


def load_check_failures(case: Case, utility: str) -> list[tuple[Key, str]]:
    """The checks a load fails before writing anything (CONTRACT broadcast_state_dict steps
    1-2, distribute_state_dict, broadcast_tensors), in the order the contract makes them:
    ``(key, message)`` for each DTensor in the full state dict, then for each local DTensor
    entry (in load order) whose global shape is not its full tensor's. Every rank holds the same
    specs, so every rank fails them, naming group rank 0 where the ranks agree."""
    full_items = dict(full_items_of(case.state_dict))
    failures: list[tuple[Key, str]] = []
    if utility != "broadcast_tensors":
        failures += [
            (key, f"{utility}: full_state_dict[{key!r}] is a DTensor; expected a plain tensor")
            for key, spec in full_items.items()
            if isinstance(spec, DTensorSpec)
        ]
        order = [k for k, v in full_items.items() if isinstance(v, TensorSpec)]
    else:
        order = list(case.kwarg("keys", ()))
    local_items = dict(local_items_of(other_spec(case)))
    agreed = "" if utility == "distribute_state_dict" else "rank 0, "
    for key in order:
        entry, full_shape = local_items.get(key), tuple(cast(TensorSpec, full_items[key]).shape)
        if isinstance(entry, DTensorSpec) and tuple(entry.tensor.shape) != full_shape:
            failures.append(
                (
                    key,
                    f"{utility}: {agreed}local_state_dict[{key!r}]: DTensor global shape "
                    f"{tuple(entry.tensor.shape)} does not match full shape {full_shape}",
                )
            )
    return failures


def _load(case: Case, rank: int, utility: str, strict: bool = False) -> Outcome:
    """``local_state_dict`` after ``utility`` (broadcast_state_dict, distribute_state_dict,
    broadcast_tensors) loaded the case's full state dict into it."""
    full = rank_inputs(case, case.state_dict, rank, FULL_ROOT)
    local = rank_inputs(case, other_spec(case), rank, "local_state_dict", seed_offset=1)
    failures = load_check_failures(case, utility)
    if failures and case.kwarg(CONTRACT_CHECKS, True):
        untouched = {"local_state_dict": local.observe_all(), FULL_ROOT: full.observe_all()}
        return Outcome(RaisedObs("ValueError", failures[0][1]), untouched)
    unspecified = {key for key, _ in failures}
    full_items = dict(full_items_of(case.state_dict))
    offload = bool(case.kwarg("cpu_offload", False))
    stored_on = "cpu" if offload else _device_arg_type(case)
    after: list[tuple[Any, Any]] = []
    for key, spec in local_items_of(other_spec(case)):
        path = (key,)
        if key in unspecified:
            after.append((key, ANY))
            continue
        if key not in full_items:
            if not strict:
                after.append((key, local.unchanged(path, spec)))
            continue
        source = full_items[key]
        if not isinstance(source, TensorSpec):
            after.append((key, value_obs(source, path)))
        elif isinstance(spec, ValueSpec) and spec.value is None:
            after.append((key, local.unchanged(path, spec)))  # tensors go into non-None entries
        else:
            data = full.global_value(source, path)
            if isinstance(spec, DTensorSpec):  # the same DTensor, its local tensor written in place
                kept = not (offload and local.device_type != "cpu")  # else dtensor.cpu(): a new DTensor
                after.append(
                    (
                        key,
                        tensor_obs(
                            spec,
                            loaded_piece(data, spec, rank),
                            device_type="cpu" if offload else local.device_type,
                            aliases=local.owner(spec, path) if kept else None,
                            same_as=format_path(path, "local_state_dict") if kept else None,
                        ),
                    )
                )
            else:  # a new plain tensor
                after.append(
                    (key, tensor_obs(source, data, device_type=stored_on, aliases=None, same_as=None))
                )
    keys = tuple(k for k, _ in after)
    mutated = {"local_state_dict": Container("dict", keys, tuple(v for _, v in after))}
    if rank == 0 or utility == "distribute_state_dict":
        mutated[FULL_ROOT] = full.observe_all()
    return Outcome(NONE, mutated)


def expect_broadcast_state_dict(case: Case, rank: int) -> Outcome:
    strict = bool(case.kwarg("strict", False))
    return _from_group_rank0(case, rank, lambda: _load(case, rank, "broadcast_state_dict", strict))


def _from_group_rank0(case: Case, rank: int, load: Callable[[], Outcome]) -> Outcome:
    """A load from group rank 0 of the case's ``pg``: ranks outside the group call nothing and
    change nothing; the source keeps its full state dict as it was (the others hold none)."""
    members = pg_ranks(case.kwarg("pg"), case.world_size)
    if rank not in members:
        local = rank_inputs(case, other_spec(case), rank, "local_state_dict", seed_offset=1)
        return Outcome(NONE, {"local_state_dict": local.observe_all()})
    outcome = load()
    outcome.mutated.pop(FULL_ROOT, None)
    if rank == members[0]:
        outcome.mutated[FULL_ROOT] = rank_inputs(case, case.state_dict, rank, FULL_ROOT).observe_all()
    return outcome


def expect_distribute_state_dict(case: Case, rank: int) -> Outcome:
    return _load(case, rank, "distribute_state_dict")


def expect_broadcast_tensors(case: Case, rank: int) -> Outcome:
    """Only the named keys are loaded, from group rank 0; entries of other keys stay as they
    were, and ranks outside the group change nothing."""
    keys = set(case.kwarg("keys", ()))
    full_sd = cast(DictSpec, case.state_dict)  # a full_state_dicts DictSpec
    narrowed = DictSpec(tuple((k, v) for k, v in full_sd.items if k in keys), full_sd.kind)
    return _from_group_rank0(
        case, rank, lambda: _load(replace(case, state_dict=narrowed), rank, "broadcast_tensors")
    )


def expect_distribute_tensors(case: Case, rank: int) -> Outcome:
    """Pairs of ``keys`` are processed in order: each becomes its DTensor holding its piece,
    until a pair whose full tensor's shape differs from the DTensor's global shape raises
    ValueError; that pair and the later ones stay as they were passed (the pair tuples)."""
    local = rank_inputs(case, case.state_dict, rank, "local_state_dict")
    fulls_spec = cast(DictSpec, distributed_fulls(case))
    fulls = rank_inputs(case, fulls_spec, rank, FULL_ROOT, seed_offset=1)
    local_items, full_items = dict(local_items_of(case.state_dict)), dict(fulls_spec.items)
    meta = bool(case.kwarg("meta", False))
    paired = [k for k in case.kwarg("keys", ()) if isinstance(local_items.get(k), DTensorSpec)]
    loaded: list[Key] = []
    error: Any = NONE  # the result: None, or the ValueError of the first mismatching pair
    for key in paired:
        dtensor = cast(DTensorSpec, local_items[key])
        if tuple(full_items[key].shape) != tuple(dtensor.tensor.shape):
            error = RaisedObs(
                "ValueError", f"distribute_tensors: local_state_dict[{key!r}]: DTensor global shape"
            )
            break
        loaded.append(key)

    def leaf(path: Path, spec: Leaf) -> Any:
        key = path[0]
        if key in loaded:
            dtensor = cast(DTensorSpec, spec)
            full = fulls.global_value(full_items[key], path)
            return tensor_obs(
                dtensor,
                loaded_piece(full, dtensor, rank),
                device_type=local.device_type,  # the mesh's device, also for a meta DTensor's replacement
                aliases=None if meta else local.owner(dtensor, path),
                # written in place: the DTensor of the (DTensor, full tensor) pair it was passed in
                same_as=None if meta else format_path((*path, 0), "local_state_dict"),
            )
        untouched = local.unchanged(path, spec) if not meta else _meta_obs(spec, path, local)
        if key in paired:  # not reached: still the (DTensor, full tensor) pair
            return Container("tuple", (0, 1), (untouched, fulls.unchanged(path, full_items[key])))
        return untouched

    return Outcome(error, {"local_state_dict": map_spec(case.state_dict, leaf)})


def _meta_obs(spec: Leaf, path: Path, local: RankInputs) -> Any:
    if isinstance(spec, DTensorSpec):
        return tensor_obs(spec, None, device_type="meta", aliases=None)
    return local.unchanged(path, spec)
