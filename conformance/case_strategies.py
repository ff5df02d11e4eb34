"""Hypothesis strategies that draw whole Cases, one per utility, from the spec strategies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

from hypothesis import strategies as st

from conformance.case import Case
from conformance.vocabulary import pg_ranks
from strategies.built import built_once, sampled
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    Key,
    Path,
    SeqSpec,
    ShardedTensorSpec,
    Spec,
    TensorSpec,
    UnsupportedSpec,
    ValueSpec,
    iter_leaves,
    replace_leaves,
)
from strategies.tensors import TREE_DTYPES, placements_for, sharded_tensor_specs, tensor_specs
from strategies.trees import flat_state_dict_specs, model_optim_state_dicts, state_dict_specs

# Placements of local DTensors that loading utilities fill from a full tensor.
LOADABLE_PLACEMENTS = ("shard", "replicate", "strided_shard", "partial")
SEEDS = st.integers(0, 2**31 - 1)


@built_once
@st.composite
def nested_state_dicts(draw: st.DrawFn, world_size: int, allow_unsupported: bool = False, **kw) -> DictSpec:
    """Arbitrary trees most of the time, realistic model+optimizer state dicts otherwise."""
    if draw(st.integers(0, 3), label="realistic") == 0:
        return draw(model_optim_state_dicts(world_size))
    return draw(state_dict_specs(world_size, allow_unsupported=allow_unsupported, **kw))


@built_once
def ranks_only_for(world_size: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.one_of(
        st.just(()),
        st.sets(st.integers(0, world_size - 1), min_size=1).map(lambda s: tuple(sorted(s))),
    )


PGS = st.sampled_from([None, "world", "copy"])
#: ``pg`` choices with a subgroup: "tail" is every rank but global rank 0 (so group rank 0 is
#: global rank 1). DTensors live on meshes over every rank, so such cases hold none.
SUBGROUP_PGS = st.sampled_from([None, "world", "copy", "tail"])


def subgroup_pgs(world_size: int) -> st.SearchStrategy:
    """SUBGROUP_PGS where a group without global rank 0 has members (2+ ranks), else PGS."""
    return SUBGROUP_PGS if world_size > 1 else PGS


@built_once
def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A keyword argument that is omitted (None: the utility's default applies) as often as it
    is passed, so that a fork which changes a default fails."""
    return st.one_of(st.none(), strategy)


def _kwargs(**drawn: object) -> tuple[tuple[str, object], ...]:
    """The passed keyword arguments (None: omitted)."""
    return tuple((k, v) for k, v in drawn.items() if v is not None)


@st.composite
def gather_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    pg = draw(subgroup_pgs(ws), label="pg")
    allow_unsupported = draw(st.booleans())
    if pg == "tail":
        sd = draw(subgroup_state_dicts(pg_ranks(pg, ws), allow_unsupported), label="state_dict")
    else:
        sd = draw(nested_state_dicts(ws, allow_unsupported=allow_unsupported), label="state_dict")
    kwargs = _kwargs(
        cpu_offload=draw(optional(st.booleans())),
        ranks_only=draw(optional(ranks_only_for(ws))),
        type_check=draw(optional(st.booleans())),
        pg=pg,
    )
    return Case("gather_state_dict", ws, draw(SEEDS), sd, kwargs=kwargs)


def on_members(spec: ShardedTensorSpec, members: Sequence[int]) -> ShardedTensorSpec:
    """``spec`` drawn for ``len(members)`` ranks, its chunks moved to the members' global ranks."""
    return replace(spec, rank_order=tuple(members[r] for r in spec.rank_order))


@built_once
@st.composite
def subgroup_state_dicts(draw: st.DrawFn, members: Sequence[int], allow_unsupported: bool) -> DictSpec:
    """A tree for a collective over the subgroup ``members`` (global ranks): no DTensors (their
    meshes span every rank), ShardedTensors whose chunks live on the members only."""
    kinds = ("tensor", "sharded_tensor", "value", "bytesio")
    sd = draw(state_dict_specs(len(members), leaf_kinds=kinds, allow_unsupported=allow_unsupported))
    return replace_leaves(
        sd,
        {
            path: on_members(leaf, members)
            for path, leaf in iter_leaves(sd)
            if isinstance(leaf, ShardedTensorSpec)
        },
    )


@st.composite
def on_one_rank(draw: st.DrawFn, spec: Spec, world_size: int) -> Spec:
    """``spec``, or (a third of the draws, when it has unsupported leaves) ``spec`` with each
    unsupported leaf held by one drawn rank only: an error path of a local utility whose
    ranks disagree (the ranks that hold the leaf raise, the others do not)."""
    unsupported = [(p, leaf) for p, leaf in iter_leaves(spec) if isinstance(leaf, UnsupportedSpec)]
    if not unsupported or draw(st.integers(0, 2), label="unsupported on one rank") != 0:
        return spec
    return replace_leaves(
        spec,
        {p: replace(leaf, ranks=(draw(st.integers(0, world_size - 1)),)) for p, leaf in unsupported},
    )


@st.composite
def offload_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    sd = draw(nested_state_dicts(ws, allow_unsupported=draw(st.booleans())), label="state_dict")
    sd = draw(on_one_rank(sd, ws))
    kwargs = _kwargs(ranks_only=draw(optional(ranks_only_for(ws))), type_check=draw(optional(st.booleans())))
    return Case("offload_state_dict_to_cpu", ws, draw(SEEDS), sd, kwargs=kwargs)


def without_views(spec: Spec) -> Spec:
    """``spec`` with every share group dissolved (a destination must not alias itself)."""
    repl = {
        path: TensorSpec(leaf.shape, leaf.dtype, leaf.layout, leaf.per_rank)
        for path, leaf in iter_leaves(spec)
        if isinstance(leaf, TensorSpec) and leaf.view_of is not None
    }
    return replace_leaves(spec, repl)


_ALTERATIONS = st.sampled_from(["leaf", "container"])
_CONTAINER_ALTERATION = st.sampled_from(["container"])
_LEAF_ALTERATIONS = st.sampled_from(["shape", "dtype", "kind"])


@st.composite
def altered(draw: st.DrawFn, spec: Spec) -> Spec:
    """``spec`` changed in one place so that it no longer matches: a tensor's shape, dtype or
    kind, a key dropped or added, a sequence made longer."""
    leaves = [(p, leaf) for p, leaf in iter_leaves(spec) if p]
    containers = _containers(spec)
    choice = draw(_ALTERATIONS if leaves else _CONTAINER_ALTERATION, label="alteration")
    if choice == "leaf":
        path, leaf = draw(st.sampled_from(leaves), label="altered leaf")
        return replace_leaves(spec, {path: draw(_altered_leaf(leaf))})
    path, node = draw(st.sampled_from(containers), label="altered container")
    new: Spec
    if isinstance(node, DictSpec):
        if bool(node.items) and draw(st.booleans()):
            new = DictSpec(node.items[:-1], node.kind)
        else:
            new = DictSpec((*node.items, ("__extra__", ValueSpec(1))), node.kind)
    elif draw(st.booleans()):
        new = SeqSpec((*node.items, ValueSpec(1)), node.kind)
    else:  # same items, other category: list <-> tuple
        new = SeqSpec(node.items, "tuple" if node.kind == "list" else "list")
    return _replace_node(spec, path, new)


@st.composite
def _altered_leaf(draw: st.DrawFn, leaf: Spec) -> Spec:
    if isinstance(leaf, TensorSpec):
        how = draw(_LEAF_ALTERATIONS)
        if how == "shape":
            return TensorSpec((*leaf.shape, 2), leaf.dtype, "contiguous", leaf.per_rank)
        if how == "dtype":
            dtype = "float64" if leaf.dtype != "float64" else "float32"
            return TensorSpec(leaf.shape, dtype, leaf.layout, leaf.per_rank)
        return ValueSpec(0)
    if isinstance(leaf, DTensorSpec) and draw(st.booleans()):
        # same global tensor, other placements: the local shape may differ on some ranks only
        placements = draw(placements_for(leaf.tensor, leaf.mesh_shape))
        return DTensorSpec(leaf.tensor, leaf.mesh_shape, placements)
    if isinstance(leaf, (DTensorSpec, ShardedTensorSpec)):
        t = leaf.tensor
        if draw(st.booleans()):
            return TensorSpec(t.shape, t.dtype)  # same shape and dtype, plain kind
        return TensorSpec(t.shape, "float64" if t.dtype != "float64" else "float32")
    return TensorSpec((1,), "float32")


def _containers(spec: Spec, path: Path = ()) -> list[tuple[Path, DictSpec | SeqSpec]]:
    out: list[tuple[Path, DictSpec | SeqSpec]] = (
        [(path, spec)] if isinstance(spec, (DictSpec, SeqSpec)) else []
    )
    if isinstance(spec, DictSpec):
        for k, c in spec.items:
            out += _containers(c, (*path, k))
    elif isinstance(spec, SeqSpec):
        for i, c in enumerate(spec.items):
            out += _containers(c, (*path, i))
    return out


def _replace_node(spec: Spec, path: tuple, new: Spec) -> Spec:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(spec, DictSpec):
        return DictSpec(
            tuple((k, _replace_node(c, rest, new) if k == head else c) for k, c in spec.items),
            spec.kind,
        )
    assert isinstance(spec, SeqSpec)
    return SeqSpec(
        tuple(_replace_node(c, rest, new) if i == head else c for i, c in enumerate(spec.items)),
        spec.kind,
    )


@st.composite
def copy_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    sd = draw(nested_state_dicts(ws, allow_unsupported=draw(st.booleans())), label="state_dict")
    sd = draw(on_one_rank(sd, ws))
    dest = without_views(sd)
    if draw(st.integers(0, 3), label="mismatch") == 0:
        dest = draw(altered(dest))
    kwargs = _kwargs(non_blocking=draw(optional(st.booleans())), type_check=draw(optional(st.booleans())))
    return Case("copy_state_dict", ws, draw(SEEDS), sd, other=dest, kwargs=kwargs)


#: ``pin_memory``: omitted half of the time.
PIN_MEMORY = st.sampled_from([None, None, False, True])


@st.composite
def create_cpu_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    sd = draw(nested_state_dicts(ws), label="state_dict")
    kwargs = _kwargs(
        pin_memory=draw(PIN_MEMORY),
        share_memory=draw(optional(st.booleans())),
    )
    return Case("create_cpu_state_dict", ws, draw(SEEDS), sd, kwargs=kwargs)


@st.composite
def similarity_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    sd = draw(nested_state_dicts(ws), label="state_dict")
    other = without_views(sd)
    if draw(st.booleans(), label="altered"):
        other = draw(altered(other))
    return Case("check_state_dict_similarity", ws, draw(SEEDS), sd, other=other)


def fill_empty_containers(spec: Spec) -> Spec:
    """Empty containers replaced by a None leaf (flattening cannot represent them)."""
    if isinstance(spec, DictSpec):
        return (
            DictSpec(tuple((k, fill_empty_containers(c)) for k, c in spec.items), spec.kind)
            if spec.items
            else ValueSpec(None)
        )
    if isinstance(spec, SeqSpec):
        return (
            SeqSpec(tuple(fill_empty_containers(c) for c in spec.items), spec.kind)
            if spec.items
            else ValueSpec(None)
        )
    return spec


@st.composite
def flatten_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    sd = draw(nested_state_dicts(ws, allow_unsupported=True), label="state_dict")
    sd = draw(on_one_rank(sd, ws))
    if draw(st.integers(0, 4), label="dotted collision") == 0 and sd.items:
        key, child = sd.items[0]
        if isinstance(child, DictSpec) and child.items:
            sd = DictSpec((*sd.items, (f"{key}.{child.items[0][0]}", ValueSpec(0))), sd.kind)
    return Case("flatten_state_dict", ws, draw(SEEDS), sd)


def _unique_fqns(spec: Spec) -> bool:
    fqns = [".".join(map(str, p)) for p, _ in iter_leaves(spec)]
    return len(fqns) == len(set(fqns))


@st.composite
def unflatten_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    raw = draw(nested_state_dicts(ws, key_kinds=("str", "int")), label="state_dict")
    sd = fill_empty_containers(raw)
    if not isinstance(sd, DictSpec) or not _unique_fqns(sd):
        sd = DictSpec((("only", TensorSpec((2,), "float32")),))
    return Case("unflatten_state_dict", ws, draw(SEEDS), sd)


@st.composite
def all_gather_sharded_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    pg = draw(subgroup_pgs(ws), label="pg")
    members = pg_ranks(pg, ws)  # a subgroup's ShardedTensor lives on its members (global ranks)
    spec = draw(sharded_tensor_specs(len(members), dtypes=TREE_DTYPES), label="sharded tensor")
    spec = on_members(spec, members)
    return Case("all_gather_sharded_tensor", ws, draw(SEEDS), spec, kwargs=_kwargs(pg=pg))


@built_once
@st.composite
def full_state_dicts(draw: st.DrawFn, world_size: int) -> DictSpec:
    """A flat full state dict: plain tensors (0-d included, same on every rank) and values."""
    return draw(flat_state_dict_specs(world_size, leaves=_full_leaves(), max_size=5))


@built_once
def _full_leaves() -> st.SearchStrategy[TensorSpec | ValueSpec]:
    return st.one_of(
        tensor_specs(per_rank=False, dtypes=TREE_DTYPES),
        st.builds(
            ValueSpec,
            st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=3), st.none()),
        ),
    )


@st.composite
def local_for(
    draw: st.DrawFn, full: DictSpec, world_size: int, tensors_only: bool = False, allow_dtensors: bool = True
) -> DictSpec:
    """A local state dict for ``full``: per key missing, a plain tensor, a DTensor or a
    ShardedTensor of the same global shape and dtype, or a None entry; plus keys that
    ``full`` lacks. ``allow_dtensors=False`` (a subgroup pg) draws neither distributed kind."""
    from strategies.tensors import mesh_shapes

    mesh_shape = draw(mesh_shapes(world_size), label="local mesh")
    items: list[tuple[Key, Spec]] = []
    for key, leaf in full.items:
        if not isinstance(leaf, TensorSpec):
            if draw(st.booleans()):
                items.append((key, ValueSpec(0)))
            continue
        kinds = ["missing", "tensor", "none"]
        if allow_dtensors:
            kinds += ["dtensor", "dtensor"] + (["sharded", "sharded"] if leaf.shape else [])
        how = draw(_local_kinds(tuple(kinds)), label=f"local {key}")
        plain = TensorSpec(leaf.shape, leaf.dtype)
        if how == "tensor":
            items.append((key, plain))
        elif how == "dtensor":
            if draw(st.integers(0, 3), label=f"other global shape {key}") == 0:
                plain = _other_shape(plain)  # an error path: the load must raise before writing
            placements = draw(placements_for(plain, mesh_shape, kinds=LOADABLE_PLACEMENTS))
            items.append((key, DTensorSpec(plain, mesh_shape, placements)))
        elif how == "sharded":  # not a DTensor: replaced like a plain entry
            dim = draw(st.integers(0, plain.ndim - 1), label=f"sharded dim {key}")
            order = draw(st.permutations(range(world_size)), label=f"sharded ranks {key}")
            items.append((key, ShardedTensorSpec(plain, dim, tuple(order))))
        elif how == "none" and not tensors_only:
            items.append((key, ValueSpec(None)))
    if draw(st.booleans(), label="extra local key"):
        items.append(("local_only", TensorSpec((2,), "float32")))
    return DictSpec(tuple(items))


@built_once
def _local_kinds(kinds: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(list(kinds))


@st.composite
def with_dtensor_entry(draw: st.DrawFn, full: DictSpec, world_size: int) -> DictSpec:
    """``full``, or (one draw in eight) ``full`` with its first n-d tensor entry made a DTensor
    of it: an error path, the load must raise on every rank before writing anything."""
    from strategies.tensors import mesh_shapes

    keys = [k for k, v in full.items if isinstance(v, TensorSpec) and v.shape]
    if not keys or draw(st.integers(0, 7), label="DTensor in full_state_dict") != 0:
        return full
    mesh_shape = draw(mesh_shapes(world_size), label="full mesh")
    tensor = cast(TensorSpec, dict(full.items)[keys[0]])
    plain = TensorSpec(tensor.shape, tensor.dtype)
    placements = draw(placements_for(plain, mesh_shape, kinds=("shard", "replicate")))
    return DictSpec(
        tuple((k, DTensorSpec(plain, mesh_shape, placements) if k == keys[0] else v) for k, v in full.items),
        full.kind,
    )


@st.composite
def broadcast_cases(
    draw: st.DrawFn, world_sizes: Sequence[int], utility: str = "broadcast_state_dict"
) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    full = draw(full_state_dicts(ws), label="full_state_dict")
    if utility == "broadcast_state_dict":
        pg = draw(subgroup_pgs(ws), label="pg")
        kwargs = _kwargs(
            strict=draw(optional(st.booleans())), cpu_offload=draw(optional(st.booleans())), pg=pg
        )
    else:
        pg = draw(PGS)
        kwargs = _kwargs(pg=pg)
    local = draw(local_for(full, ws, allow_dtensors=pg != "tail"), label="local_state_dict")
    if pg != "tail":  # DTensors live on meshes over every rank
        full = draw(with_dtensor_entry(full, ws))
    return Case(utility, ws, draw(SEEDS), full, other=local, kwargs=kwargs)


@st.composite
def broadcast_tensors_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    full = draw(full_state_dicts(ws), label="full_state_dict")
    tensor_keys = [k for k, v in full.items if isinstance(v, TensorSpec)]
    if not tensor_keys:
        full = DictSpec((*full.items, ("w", TensorSpec((3,), "float32"))))
        tensor_keys = ["w"]
    keys = draw(st.lists(st.sampled_from(tensor_keys), min_size=1, unique=True), label="keys")
    pg = draw(subgroup_pgs(ws), label="pg")
    local = draw(
        local_for(full, ws, tensors_only=True, allow_dtensors=pg != "tail"), label="local_state_dict"
    )
    return Case(
        "broadcast_tensors",
        ws,
        draw(SEEDS),
        full,
        other=local,
        kwargs=_kwargs(keys=tuple(keys), pg=pg),
    )


_ENTRY_NAMES = st.lists(st.sampled_from(["w", "b", "emb", "head"]), min_size=1, unique=True)


@built_once
def _distributed_entries(world_size: int, mesh_shape: tuple[int, ...]) -> st.SearchStrategy[Spec]:
    """Entries of a ``distribute_tensors`` local dict: a quarter are plain tensors (and an
    "absent" key names no entry): neither is a (DTensor, full tensor) pair, so both must be
    left untouched."""
    from strategies.tensors import dtensor_specs

    loaded = dtensor_specs(world_size, mesh_shape=mesh_shape, kinds=LOADABLE_PLACEMENTS, dtypes=TREE_DTYPES)
    return st.one_of(loaded, loaded, loaded, tensor_specs(dtypes=TREE_DTYPES))


@st.composite
def distribute_tensors_cases(draw: st.DrawFn, world_sizes: Sequence[int]) -> Case:
    from strategies.tensors import mesh_shapes

    ws = draw(sampled(tuple(world_sizes)), label="world_size")
    mesh_shape = draw(mesh_shapes(ws))
    names = draw(_ENTRY_NAMES, label="keys")
    entries = _distributed_entries(ws, mesh_shape)
    local = DictSpec(tuple((n, draw(entries, label=f"entry {n}")) for n in names))
    keys = draw(
        st.lists(st.sampled_from([*names, "absent"]), min_size=1, unique=True), label="distributed keys"
    )
    kwargs = _kwargs(keys=tuple(keys), meta=draw(st.booleans()) or None, pg=draw(PGS))
    fulls = None  # the full tensors are the DTensors' global tensors ...
    paired = [k for k in keys if isinstance(dict(local.items).get(k), DTensorSpec)]
    if paired and draw(st.integers(0, 2), label="full shape mismatch") == 0:
        # ... except, in a third of the cases, the last pair's full tensor has another shape:
        # the call must raise ValueError there (after loading the earlier keys)
        fulls = DictSpec(
            tuple(
                (k, _other_shape(v.tensor) if k == paired[-1] else v.tensor)
                for k, v in local.items
                if isinstance(v, DTensorSpec)
            )
        )
    return Case("distribute_tensors", ws, draw(SEEDS), local, other=fulls, kwargs=kwargs)


def _other_shape(tensor: TensorSpec) -> TensorSpec:
    """``tensor`` with its last side one longer (a 0-d tensor becomes 1-D)."""
    shape = (*tensor.shape[:-1], tensor.shape[-1] + 1) if tensor.shape else (1,)
    return TensorSpec(shape, tensor.dtype)


def _law(utility_cases: Callable[[Sequence[int]], st.SearchStrategy[Case]], law: str) -> Callable:
    """A law's cases: its utility's, each tree the same on every rank (a law calls collective
    utilities, whose precondition that is: CONTRACT *Collective*)."""

    def cases(world_sizes: Sequence[int]) -> st.SearchStrategy[Case]:
        return utility_cases(world_sizes).map(
            lambda c: Case(f"law:{law}", c.world_size, c.seed, on_every_rank(c.state_dict), c.other)
        )

    return cases


def on_every_rank(spec: Spec) -> Spec:
    """``spec`` with each unsupported leaf held by every rank (see :func:`on_one_rank`)."""
    one_rank = {
        p: replace(leaf, ranks=())
        for p, leaf in iter_leaves(spec)
        if isinstance(leaf, UnsupportedSpec) and leaf.ranks
    }
    return replace_leaves(spec, one_rank) if one_rank else spec


LAW_CASES: dict[str, Callable[[Sequence[int]], st.SearchStrategy[Case]]] = {
    "law:offload_after_gather": _law(offload_cases, "offload_after_gather"),
    "law:copy_into_cpu_copy": _law(create_cpu_cases, "copy_into_cpu_copy"),
    "law:flatten_roundtrip": _law(unflatten_cases, "flatten_roundtrip"),
    "law:broadcast_is_distribute": _law(broadcast_cases, "broadcast_is_distribute"),
}
