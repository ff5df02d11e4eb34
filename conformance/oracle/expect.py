"""The oracle: what every rank must observe for a case, by CONTRACT.md, from the global view.

Plain tensor arithmetic on the global tensors and the placement models' split; no process
group, no DTensor machinery, no code from any target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import torch

from conformance.case import Case
from conformance.materialise import sharded_chunks
from conformance.observation import (
    ANY,
    OUTPUT,
    Container,
    Outcome,
    RaisedObs,
    TensorObs,
    Tolerance,
    ValueObs,
)
from conformance.oracle.inputs import (
    RankInputs,
    contiguous_stride,
    map_spec,
    tensor_obs,
    value_obs,
)
from conformance.runner import FULL_ROOT, ROOT, distributed_fulls, pg_ranks
from strategies.placements import coordinate_of, local_shapes, split_over_mesh
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    Key,
    Leaf,
    Path,
    SeqSpec,
    ShardedTensorSpec,
    Spec,
    TensorLeaf,
    TensorSpec,
    UnsupportedSpec,
    ValueSpec,
    format_path,
    iter_leaves,
    torch_dtype,
)

TENSOR_SPECS = (TensorSpec, DTensorSpec, ShardedTensorSpec)
NONE = ValueObs("NoneType", None)

# Floating reductions may sum in another order than the oracle; exact everywhere else.
_REDUCTION_TOLERANCE = {
    torch.float16: Tolerance(1e-2, 1e-2),
    torch.bfloat16: Tolerance(2e-2, 2e-2),
    torch.float32: Tolerance(1e-5, 1e-5),
    torch.float64: Tolerance(1e-12, 1e-12),
    torch.complex64: Tolerance(1e-5, 1e-5),
    torch.complex128: Tolerance(1e-12, 1e-12),
}


def reduction_tolerance(leaf: DTensorSpec) -> Tolerance | None:
    if not any(p.kind == "partial" for p in leaf.placements):
        return None
    return _REDUCTION_TOLERANCE.get(torch_dtype(leaf.tensor.dtype))


def first_unsupported(spec: Spec) -> Path | None:
    return next((path for path, leaf in iter_leaves(spec) if isinstance(leaf, UnsupportedSpec)), None)


def type_check_error(spec: Spec, case: Case) -> RaisedObs | None:
    """Every rank raises ValueError naming the first unsupported leaf when type_check is on."""
    path = first_unsupported(spec)
    if path is None or not case.kwarg("type_check", True):
        return None
    return RaisedObs("ValueError", format_path(path, ""))


# The case strategies (conformance.case_strategies) fix the shape of each utility's arguments;
# these helpers state those invariants to the type checker (``cast`` only, no runtime change).

#: The items of a full state dict of a loading utility (``full_state_dicts``: plain tensors and
#: values) or of a ``local_for`` / ``distribute_tensors_cases`` local state dict (flat leaves).
FullItems = tuple[tuple[Key, TensorSpec | ValueSpec], ...]
LocalItems = tuple[tuple[Key, Leaf], ...]


def device_type_of(case: Case) -> str:
    """The device type a rank of ``case`` holds its tensors on: ``cuda`` (its own GPU) in an
    NCCL world, ``cpu`` in a gloo world."""
    return "cuda" if case.backend == "nccl" else "cpu"


def has_accelerator(case: Case) -> bool:
    """Whether the ranks of ``case`` have an accelerator (pinning is possible)."""
    return device_type_of(case) != "cpu"


def _inputs(case: Case, spec: Spec, rank: int, root: str, seed_offset: int = 0) -> RankInputs:
    """One rank's view of an argument of ``case``, on the rank's device."""
    return RankInputs(spec, case.seed + seed_offset, rank, case.world_size, root, device_type_of(case))


def _other(case: Case) -> Spec:
    """``case.other`` of a utility that takes a second state dict (copy, similarity, the
    loading utilities): its case strategy always sets it."""
    return cast(Spec, case.other)


def _full_items(spec: Spec) -> FullItems:
    """The items of a loading utility's flat full state dict (a DictSpec of tensors/values)."""
    return cast(FullItems, cast(DictSpec, spec).items)


def _local_items(spec: Spec) -> LocalItems:
    """The items of a loading utility's flat local state dict (a DictSpec of leaves)."""
    return cast(LocalItems, cast(DictSpec, spec).items)


def new_tree(tree: Any) -> Any:
    """A result tree of a utility under CONTRACT rule 2: every container is a new object, and
    each tensor shares storage with exactly the other outputs that alias the same input
    storage (a new buffer with none). Sharing is left open when some leaf's aliasing is."""
    leaves = list(_tensor_leaves(tree, ()))
    decided = all(obs.aliases is not ANY for _, obs in leaves)

    def rebuild(node: Any, path: Path) -> Any:
        if isinstance(node, Container):
            children = tuple(rebuild(c, (*path, k)) for k, c in zip(node.keys, node.children, strict=True))
            # the empty tuple is a singleton in CPython: "new" cannot be told from "the same"
            new = ANY if (node.kind, node.keys) == ("tuple", ()) else None
            return replace(node, same_as=new, children=children)
        if isinstance(node, TensorObs) and decided:
            me = format_path(path, OUTPUT)
            shares = tuple(p for p, o in leaves if p != me and o.aliases == node.aliases)
            return replace(node, shares=() if node.aliases is None else shares)
        return node

    return rebuild(tree, ())


def _tensor_leaves(node: Any, path: Path) -> Any:
    """``(output path, TensorObs)`` of every tensor leaf of an expected tree, in tree order."""
    if isinstance(node, Container):
        for key, child in zip(node.keys, node.children, strict=True):
            yield from _tensor_leaves(child, (*path, key))
    elif isinstance(node, TensorObs):
        yield format_path(path, OUTPUT), node


def expected_outcomes(case: Case, utility: str | None = None) -> list[Outcome]:
    """Every rank's expected outcome of ``case`` (as a call of ``utility``, default the case's)."""
    expect = EXPECTATIONS[utility or case.utility]
    return [expect(case.on_rank(rank), rank) for rank in range(case.world_size)]


# ------------------------------------------------------------------------------ gather / offload


def _gather(case: Case, rank: int) -> Outcome:
    members = pg_ranks(case.kwarg("pg"), case.world_size)
    if rank not in members:  # outside a subgroup pg: no call
        return Outcome(NONE, {})
    inputs = _inputs(case, case.state_dict, rank, ROOT)
    untouched = {ROOT: inputs.observe_all()}
    error = type_check_error(case.state_dict, case)
    if error is not None:
        return Outcome(error, untouched)
    ranks_only = case.kwarg("ranks_only", ())
    if ranks_only and members.index(rank) not in ranks_only:  # ranks_only names group ranks
        return Outcome(_dropped(case.state_dict), untouched)

    offload = bool(case.kwarg("cpu_offload", False))
    gathered_on = "cpu" if offload else inputs.device_type

    def leaf(path: Path, spec: Leaf) -> Any:
        if isinstance(spec, TensorSpec):  # the same object unless it must move to CPU
            return _moved_to_cpu_or_same(inputs, spec, path, moves=offload and inputs.device_type != "cpu")
        if isinstance(spec, (DTensorSpec, ShardedTensorSpec)):
            tolerance = reduction_tolerance(spec) if isinstance(spec, DTensorSpec) else None
            full = inputs.global_value(spec, path)
            return TensorObs(
                "Tensor",
                gathered_on,
                spec.tensor.dtype,
                tuple(spec.tensor.shape),
                full,
                aliases=None,
                same_as=None,
                requires_grad=False,
                tolerance=tolerance,
            )
        return value_obs(spec, path, ROOT)

    return Outcome(new_tree(map_spec(case.state_dict, leaf)), untouched)


def _offload(case: Case, rank: int) -> Outcome:
    inputs = _inputs(case, case.state_dict, rank, ROOT)
    untouched = {ROOT: inputs.observe_all()}
    error = type_check_error(case.state_dict, case)
    if error is not None:
        return Outcome(error, untouched)
    ranks_only = case.kwarg("ranks_only", ())
    if ranks_only and rank not in ranks_only:
        return Outcome(_dropped(case.state_dict), untouched)

    def leaf(path: Path, spec: Leaf) -> Any:
        if isinstance(spec, TENSOR_SPECS):  # on CPU already: the same object
            return _moved_to_cpu_or_same(inputs, spec, path, moves=inputs.device_type != "cpu")
        return value_obs(spec, path, ROOT)

    return Outcome(new_tree(map_spec(case.state_dict, leaf)), untouched)


def _moved_to_cpu_or_same(inputs: RankInputs, spec: TensorLeaf, path: Path, moves: bool) -> TensorObs:
    """An input tensor leaf after ``.to("cpu")``: a new CPU tensor (strides kept) when it
    ``moves``, else the input object itself."""
    data = inputs.local(spec, path)
    if moves:
        return inputs.tensor_obs(spec, data, device_type="cpu", aliases=None, same_as=None, keep_stride=True)
    return inputs.tensor_obs(spec, data, aliases=inputs.owner(spec, path), same_as=format_path(path, ROOT))


def _dropped(spec: Spec) -> Any:
    """What a rank outside ranks_only gets: an empty dict of the input's kind, else None."""
    if isinstance(spec, DictSpec):
        return Container("OrderedDict" if spec.kind == "ordered_dict" else "dict", (), (), same_as=None)
    return NONE


# ------------------------------------------------------------------------------ copy / create / similar


def category(spec: Spec) -> str | None:
    """Container category: dict, list or tuple (namedtuples included); None for a leaf."""
    if isinstance(spec, DictSpec):
        return "dict"
    if isinstance(spec, SeqSpec):
        return "list" if spec.kind == "list" else "tuple"
    return None


def _tensor_facts(leaf: TensorLeaf, rank: int, world_size: int, local: bool) -> tuple:
    """Kind, global shape and dtype of a tensor leaf, plus what it holds on ``rank`` if ``local``."""
    tensor = leaf if isinstance(leaf, TensorSpec) else leaf.tensor
    facts: tuple = (type(leaf).__name__, tensor.shape, tensor.dtype)
    if local and isinstance(leaf, DTensorSpec):
        facts += (
            local_shapes(tensor, leaf.mesh_shape, leaf.placements)[coordinate_of(rank, leaf.mesh_shape)],
        )
    if local and isinstance(leaf, ShardedTensorSpec):
        facts += (
            frozenset(
                (leaf.dim, start, n) for owner, start, n in sharded_chunks(leaf, world_size) if owner == rank
            ),
        )
    return facts


def pair_mismatch(
    source: Spec, dest: Spec, rank: int, world_size: int, local: bool, path: Path = ()
) -> Path | None:
    """The first path (depth-first in ``source``'s order) where the two trees do not pair:
    containers of the same category with the same key set / length, tensor leaves of the same
    kind, global shape and dtype (and, if ``local``, the same local shape or shards on ``rank``),
    any non-tensor leaf with any non-tensor leaf."""
    if category(source) or category(dest):
        if category(source) != category(dest):
            return path
        pairs: list[tuple[Key, Spec, Spec]]
        # same category: both DictSpec or both SeqSpec
        if isinstance(source, DictSpec):
            dest_items = dict(cast(DictSpec, dest).items)
            if set(dest_items) != {k for k, _ in source.items}:
                return path
            pairs = [(k, c, dest_items[k]) for k, c in source.items]
        else:
            source_seq, dest_seq = cast(SeqSpec, source), cast(SeqSpec, dest)
            if len(source_seq.items) != len(dest_seq.items):
                return path
            pairs = [(i, c, d) for i, (c, d) in enumerate(zip(source_seq.items, dest_seq.items, strict=True))]
        for key, child, other in pairs:
            found = pair_mismatch(child, other, rank, world_size, local, (*path, key))
            if found is not None:
                return found
        return None
    if isinstance(source, TENSOR_SPECS) != isinstance(dest, TENSOR_SPECS):
        return path
    if (
        isinstance(source, TENSOR_SPECS)
        and isinstance(dest, TENSOR_SPECS)
        and _tensor_facts(source, rank, world_size, local) != _tensor_facts(dest, rank, world_size, local)
    ):
        return path
    return None


def _copy(case: Case, rank: int) -> Outcome:
    source = _inputs(case, case.state_dict, rank, ROOT)
    other = _other(case)
    dest = _inputs(case, other, rank, "copy_state_dict", seed_offset=1)
    untouched = {ROOT: source.observe_all(), "copy_state_dict": dest.observe_all()}
    error = type_check_error(case.state_dict, case)
    if error is not None:
        return Outcome(error, untouched)
    mismatch = pair_mismatch(case.state_dict, other, rank, case.world_size, local=True)
    if mismatch is not None:
        return Outcome(RaisedObs("ValueError", format_path(mismatch, "")), untouched)
    dest_leaves = dict(iter_leaves(other))

    # The trees pair (no mismatch), so a tensor leaf's counterpart is a tensor leaf too.
    def written(path: Path, spec: Leaf) -> Any:
        if isinstance(spec, TENSOR_SPECS):  # the destination's tensor object, written
            target = cast(TensorLeaf, dest_leaves[path])
            return dest.tensor_obs(
                target,
                source.local(spec, path),
                aliases=dest.owner(target, path),
                same_as=format_path(path, "copy_state_dict"),
            )
        return value_obs(spec, path, ROOT)

    def dest_after(path: Path, spec: Leaf) -> Any:
        if isinstance(spec, TENSOR_SPECS):
            data = source.local(cast(TensorLeaf, source.leaves[path]), path)
            return dest.tensor_obs(spec, data, aliases=dest.owner(spec, path))
        return dest.unchanged(path, spec)

    mutated = {ROOT: untouched[ROOT], "copy_state_dict": map_spec(other, dest_after)}
    return Outcome(new_tree(map_spec(case.state_dict, written)), mutated)


#: CONTRACT create_cpu_state_dict: what pin_memory=True raises where no accelerator is.
PIN_MEMORY_UNAVAILABLE = "pin_memory=True needs an accelerator; none is available"


def _create_cpu(case: Case, rank: int) -> Outcome:
    inputs = _inputs(case, case.state_dict, rank, ROOT)
    untouched = {ROOT: inputs.observe_all()}
    pin = bool(case.kwarg("pin_memory", False))
    if pin and not has_accelerator(case):
        return Outcome(RaisedObs("RuntimeError", PIN_MEMORY_UNAVAILABLE), untouched)
    share = bool(case.kwarg("share_memory", False))

    def leaf(path: Path, spec: Leaf) -> Any:
        if isinstance(spec, TENSOR_SPECS):
            local = inputs.local(spec, path)
            holds_nothing = isinstance(spec, ShardedTensorSpec) and not inputs.owns_shard(spec)
            flat = isinstance(spec, ShardedTensorSpec)  # its local data is observed flattened
            return inputs.tensor_obs(
                spec,
                None,  # contents unspecified
                device_type="cpu",
                local_shape=None if holds_nothing else tuple(local.shape),
                stride=ANY if flat else contiguous_stride(tuple(local.shape)),
                aliases=None,
                same_as=None,
                pinned=ANY if holds_nothing else pin and local.numel() > 0,
                shared=ANY if holds_nothing else share,
            )
        return value_obs(spec, path, ROOT)

    return Outcome(new_tree(map_spec(case.state_dict, leaf)), untouched)


def _similarity(case: Case, rank: int) -> Outcome:
    first = _inputs(case, case.state_dict, rank, ROOT)
    other = _other(case)
    second = _inputs(case, other, rank, "compared_state_dict", seed_offset=1)
    untouched = {ROOT: first.observe_all(), "compared_state_dict": second.observe_all()}
    similar = pair_mismatch(case.state_dict, other, rank, case.world_size, local=False) is None
    return Outcome(ValueObs("bool", similar), untouched)


# ------------------------------------------------------------------------------ loading full state


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
    full_items = dict(_full_items(case.state_dict))
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
    local_items = dict(_local_items(_other(case)))
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
    full = _inputs(case, case.state_dict, rank, FULL_ROOT)
    local = _inputs(case, _other(case), rank, "local_state_dict", seed_offset=1)
    failures = load_check_failures(case, utility)
    if failures and case.kwarg(CONTRACT_CHECKS, True):
        untouched = {"local_state_dict": local.observe_all(), FULL_ROOT: full.observe_all()}
        return Outcome(RaisedObs("ValueError", failures[0][1]), untouched)
    unspecified = {key for key, _ in failures}
    full_items = dict(_full_items(case.state_dict))
    offload = bool(case.kwarg("cpu_offload", False))
    stored_on = "cpu" if offload else _device_arg_type(case)
    after: list[tuple[Any, Any]] = []
    for key, spec in _local_items(_other(case)):
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


def _broadcast_state_dict(case: Case, rank: int) -> Outcome:
    strict = bool(case.kwarg("strict", False))
    return _from_group_rank0(case, rank, lambda: _load(case, rank, "broadcast_state_dict", strict))


def _from_group_rank0(case: Case, rank: int, load: Callable[[], Outcome]) -> Outcome:
    """A load from group rank 0 of the case's ``pg``: ranks outside the group call nothing and
    change nothing; the source keeps its full state dict as it was (the others hold none)."""
    members = pg_ranks(case.kwarg("pg"), case.world_size)
    if rank not in members:
        local = _inputs(case, _other(case), rank, "local_state_dict", seed_offset=1)
        return Outcome(NONE, {"local_state_dict": local.observe_all()})
    outcome = load()
    outcome.mutated.pop(FULL_ROOT, None)
    if rank == members[0]:
        outcome.mutated[FULL_ROOT] = _inputs(case, case.state_dict, rank, FULL_ROOT).observe_all()
    return outcome


def _distribute_state_dict(case: Case, rank: int) -> Outcome:
    return _load(case, rank, "distribute_state_dict")


def _broadcast_tensors(case: Case, rank: int) -> Outcome:
    """Only the named keys are loaded, from group rank 0; entries of other keys stay as they
    were, and ranks outside the group change nothing."""
    keys = set(case.kwarg("keys", ()))
    full_sd = cast(DictSpec, case.state_dict)  # a full_state_dicts DictSpec
    narrowed = DictSpec(tuple((k, v) for k, v in full_sd.items if k in keys), full_sd.kind)
    return _from_group_rank0(
        case, rank, lambda: _load(replace(case, state_dict=narrowed), rank, "broadcast_tensors")
    )


def _distribute_tensors(case: Case, rank: int) -> Outcome:
    """Pairs of ``keys`` are processed in order: each becomes its DTensor holding its piece,
    until a pair whose full tensor's shape differs from the DTensor's global shape raises
    ValueError; that pair and the later ones stay as they were passed (the pair tuples)."""
    local = _inputs(case, case.state_dict, rank, "local_state_dict")
    fulls_spec = cast(DictSpec, distributed_fulls(case))
    fulls = _inputs(case, fulls_spec, rank, FULL_ROOT, seed_offset=1)
    local_items, full_items = dict(_local_items(case.state_dict)), dict(fulls_spec.items)
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


# ------------------------------------------------------------------------------ flatten


def flatten_paths(spec: Spec) -> list[tuple[str, Path]]:
    """(dot-joined key, spec path) of every leaf: mappings and sequences are descended,
    empty containers vanish."""
    return [(".".join(str(k) for k in path), path) for path, _ in iter_leaves(spec)]


def _flatten(case: Case, rank: int) -> Outcome:
    inputs = _inputs(case, case.state_dict, rank, ROOT)
    untouched = {ROOT: inputs.observe_all()}
    leaves = dict(iter_leaves(case.state_dict))
    seen: set[str] = set()
    flat_keys, flat_values, mapping_values = [], [], []
    for fqn, path in flatten_paths(case.state_dict):
        if fqn in seen:
            return Outcome(RaisedObs("ValueError", fqn), untouched)
        seen.add(fqn)
        flat_keys.append(fqn)
        flat_values.append(inputs.unchanged(path, leaves[path]))
        mapping_values.append(_path_obs(object_path(case.state_dict, path)))
    flat = Container("dict", tuple(flat_keys), tuple(flat_values))
    mapping = Container("dict", tuple(flat_keys), tuple(mapping_values))
    return Outcome(Container("tuple", (0, 1), (flat, mapping)), untouched)


def _path_obs(path: tuple) -> Container:
    return Container("tuple", tuple(range(len(path))), tuple(ValueObs(type(k).__name__, k) for k in path))


def object_path(spec: Spec, path: Path) -> tuple:
    """The object path flattening records: dict keys as str, sequence indices as int."""
    out: list[Key] = []
    node = spec
    for key in path:
        if isinstance(node, DictSpec):
            out.append(str(key))
            node = dict(node.items)[key]
        else:
            # ``path`` leads through containers: below a non-dict the key is a sequence index
            out.append(key)
            node = cast(SeqSpec, node).items[cast(int, key)]
    return tuple(out)


def _unflatten(case: Case, rank: int) -> Outcome:
    """Nested plain dicts (str keys) and lists rebuilt from the flattened leaves (cases hold no
    empty containers, which flattening cannot represent)."""
    inputs = _inputs(case, case.state_dict, rank, ROOT)

    def rebuilt(spec: Spec, path: Path) -> Any:
        if isinstance(spec, DictSpec):
            keys = tuple(str(k) for k, _ in spec.items)
            return Container("dict", keys, tuple(rebuilt(c, (*path, k)) for k, c in spec.items))
        if isinstance(spec, SeqSpec):
            children = tuple(rebuilt(c, (*path, i)) for i, c in enumerate(spec.items))
            return Container("list", tuple(range(len(children))), children)
        return inputs.unchanged(path, spec)

    return Outcome(rebuilt(case.state_dict, ()), {})


def _all_gather_sharded(case: Case, rank: int) -> Outcome:
    if rank not in pg_ranks(case.kwarg("pg"), case.world_size):  # outside the group: no call
        return Outcome(NONE, {})
    inputs = _inputs(case, case.state_dict, rank, ROOT)
    spec = cast(ShardedTensorSpec, case.state_dict)  # all_gather_sharded_cases: one ShardedTensor
    full = inputs.global_value(spec, ())
    shape = tuple(spec.tensor.shape)
    device = case.kwarg("device")  # else the group's device: the rank's own
    result = TensorObs(
        "Tensor",
        torch.device(device).type if device not in (None, "rank") else inputs.device_type,
        spec.tensor.dtype,
        shape,
        full,
        stride=contiguous_stride(shape),
        aliases=None,
        same_as=None,
        shares=(),
        requires_grad=False,
    )
    return Outcome(result, {ROOT: inputs.observe_all()})


EXPECTATIONS: dict[str, Callable[[Case, int], Outcome]] = {
    "gather_state_dict": _gather,
    "offload_state_dict_to_cpu": _offload,
    "copy_state_dict": _copy,
    "create_cpu_state_dict": _create_cpu,
    "check_state_dict_similarity": _similarity,
    "distribute_tensors": _distribute_tensors,
    "broadcast_tensors": _broadcast_tensors,
    "broadcast_state_dict": _broadcast_state_dict,
    "distribute_state_dict": _distribute_state_dict,
    "flatten_state_dict": _flatten,
    "unflatten_state_dict": _unflatten,
    "all_gather_sharded_tensor": _all_gather_sharded,
}
