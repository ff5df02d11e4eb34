"""Hypothesis strategies for whole state dicts: leaves, arbitrary nested trees, realistic
model + optimizer state dicts, and flat str-keyed dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from hypothesis import strategies as st

from strategies.built import built_once, sampled
from strategies.spec import (
    DICT_KINDS,
    SEQ_KINDS,
    UNSUPPORTED_KINDS,
    BytesIOSpec,
    DictSpec,
    DTensorSpec,
    Key,
    Leaf,
    SeqSpec,
    Spec,
    TensorSpec,
    UnsupportedSpec,
    ValueSpec,
    _key_id,
    iter_leaves,
    replace_leaves,
)
from strategies.tensors import (
    TREE_DTYPES,
    dtensor_specs,
    mesh_shapes,
    placements_for,
    sharded_tensor_specs,
    tensor_specs,
)

#: Leaf kinds :func:`leaf_specs` draws by default ("unsupported" only when asked for).
LEAF_KINDS: tuple[str, ...] = ("tensor", "dtensor", "sharded_tensor", "value", "bytesio")
CONTAINER_KINDS: tuple[str, ...] = DICT_KINDS + SEQ_KINDS


@built_once
def python_values() -> st.SearchStrategy[int | float | bool | str | bytes | None]:
    """Values a state dict holds as-is: ints (beyond 64 bits too), floats (NaN, -0.0, inf),
    bools, str, bytes and None."""
    return st.one_of(
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=8),
        st.binary(max_size=8),
        st.none(),
    )


@built_once
def keys(*, key_kinds: Sequence[str] = ("str", "int"), alphabet: str = "abxy_.") -> st.SearchStrategy[Key]:
    """A dict key: short str (possibly empty or dotted) or small int."""
    options: list[st.SearchStrategy[Key]] = []
    if "str" in key_kinds:
        options.append(st.text(alphabet=alphabet, max_size=5))
    if "int" in key_kinds:
        options.append(st.integers(-2, 20))
    return st.one_of(options)


@built_once
@st.composite
def leaf_specs(
    draw: st.DrawFn,
    world_size: int,
    *,
    mesh_shape: tuple[int, ...] | None = None,
    kinds: Sequence[str] = LEAF_KINDS,
    dtypes: Sequence[str] = TREE_DTYPES,
    placement_kinds: Sequence[str] | None = None,
    max_side: int = 5,
) -> Leaf:
    """One leaf of a kind in ``kinds`` (see :data:`LEAF_KINDS` plus ``"unsupported"``)."""
    kind = draw(sampled(tuple(kinds)), label="leaf kind")
    if kind == "tensor":
        return draw(tensor_specs(max_side=max_side, dtypes=dtypes))
    if kind == "dtensor":
        return draw(
            dtensor_specs(
                world_size,
                mesh_shape=mesh_shape,
                max_side=max_side + 2,
                dtypes=dtypes,
                kinds=placement_kinds,
            )
        )
    if kind == "sharded_tensor":
        return draw(sharded_tensor_specs(world_size, max_side=max_side + 2, dtypes=dtypes))
    if kind == "value":
        return ValueSpec(draw(python_values()))
    if kind == "bytesio":
        return BytesIOSpec(draw(st.binary(max_size=16)))
    if kind == "unsupported":
        return UnsupportedSpec(draw(sampled(UNSUPPORTED_KINDS)))
    raise ValueError(f"unknown leaf kind {kind!r}")


def _container(kind: str, children: list[Spec], dict_keys: list[Key]) -> Spec:
    if kind in DICT_KINDS:
        return DictSpec(tuple(zip(dict_keys, children, strict=True)), kind)
    return SeqSpec(tuple(children), kind)


@st.composite
def share_groups(draw: st.DrawFn, tree: Spec, *, max_groups: int = 2) -> Spec:
    """``tree`` with some plain tensor leaves put into share groups (``view_of``).

    A group's first member fixes its dtype and per_rank, which later members take (so that
    groups form whatever the dtypes drawn); labels embed both."""
    replacements = {}
    kinds: dict[int, tuple[str, bool]] = {}
    for path, leaf in iter_leaves(tree):
        if isinstance(leaf, TensorSpec):
            group = draw(_view_groups(max_groups), label="view_of")
            if group is not None:
                dtype, per_rank = kinds.setdefault(group, (leaf.dtype, leaf.per_rank))
                label = f"g{group}-{dtype}-{'rank' if per_rank else 'same'}"
                replacements[path] = TensorSpec(leaf.shape, dtype, leaf.layout, per_rank, label)
    return replace_leaves(tree, replacements)


@built_once
def _view_groups(max_groups: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(0, max_groups - 1))


@built_once
@st.composite
def state_dict_specs(
    draw: st.DrawFn,
    world_size: int,
    *,
    mesh_shape: tuple[int, ...] | None = None,
    max_depth: int = 3,
    max_width: int = 4,
    leaves: st.SearchStrategy[Leaf] | None = None,
    leaf_kinds: Sequence[str] = LEAF_KINDS,
    allow_unsupported: bool = False,
    container_kinds: Sequence[str] = CONTAINER_KINDS,
    key_kinds: Sequence[str] = ("str", "int"),
    allow_views: bool = True,
    dtypes: Sequence[str] = TREE_DTYPES,
) -> DictSpec:
    """An arbitrary nested state dict: the root is a dict or OrderedDict; below it dicts
    (str and int keys), lists, tuples, namedtuples, empty ones too, nested up to
    ``max_depth`` containers deep. All DTensors share one mesh (drawn unless given)."""
    if mesh_shape is None:
        mesh_shape = draw(mesh_shapes(world_size), label="mesh_shape")
    if leaves is None:
        kinds = tuple(leaf_kinds) + (("unsupported",) if allow_unsupported else ())
        leaves = leaf_specs(world_size, mesh_shape=mesh_shape, kinds=kinds, dtypes=dtypes)
    dict_kinds = tuple(k for k in container_kinds if k in DICT_KINDS) or ("dict",)

    def node(depth: int, kinds: Sequence[str]) -> Spec:
        is_leaf = depth > 0 and (depth >= max_depth or draw(st.integers(0, 2)) == 0)
        if is_leaf:
            return draw(leaves)
        kind = draw(sampled(tuple(kinds)), label="container kind")
        width = draw(st.integers(0, max_width), label="width")
        dict_keys: list[Key] = []
        if kind in DICT_KINDS:
            dict_keys = draw(
                st.lists(keys(key_kinds=key_kinds), min_size=width, max_size=width, unique_by=_key_id),
                label="keys",
            )
        children = [node(depth + 1, container_kinds) for _ in range(width)]
        return _container(kind, children, dict_keys)

    tree = node(0, dict_kinds)
    if allow_views:
        tree = draw(share_groups(tree))
    # The root is drawn from ``dict_kinds`` at depth 0 (never a leaf) and ``share_groups``
    # only replaces leaves, so the tree is a DictSpec.
    return cast(DictSpec, tree)


@built_once
@st.composite
def flat_state_dict_specs(
    draw: st.DrawFn,
    world_size: int,
    *,
    mesh_shape: tuple[int, ...] | None = None,
    min_size: int = 0,
    max_size: int = 6,
    leaves: st.SearchStrategy[Leaf] | None = None,
    leaf_kinds: Sequence[str] = ("tensor", "dtensor"),
    dtypes: Sequence[str] = TREE_DTYPES,
) -> DictSpec:
    """A flat dict with unique str keys (as ``_broadcast_state_dict`` and
    ``_distribute_state_dict`` take), tensor and DTensor leaves by default."""
    if mesh_shape is None:
        mesh_shape = draw(mesh_shapes(world_size), label="mesh_shape")
    if leaves is None:
        leaves = leaf_specs(world_size, mesh_shape=mesh_shape, kinds=leaf_kinds, dtypes=dtypes)
    names = draw(
        st.lists(
            st.text(alphabet="abc._", min_size=1, max_size=8),
            min_size=min_size,
            max_size=max_size,
            unique=True,
        ),
        label="keys",
    )
    return DictSpec(tuple((name, draw(leaves)) for name in names))


@built_once
@st.composite
def model_optim_state_dicts(
    draw: st.DrawFn,
    world_size: int,
    *,
    mesh_shape: tuple[int, ...] | None = None,
    max_params: int = 4,
    dtypes: Sequence[str] = ("float32", "bfloat16", "float64"),
    placement_kinds: Sequence[str] | None = None,
) -> DictSpec:
    """A realistic ``{"model": ..., "optim": ...}`` state dict: DTensor parameters, an Adam
    state per parameter (0-d ``step``, ``exp_avg``/``exp_avg_sq`` placed like the
    parameter), ``param_groups`` with hyper-parameters and parameter ids, and a plain
    buffer plus an int64 0-d counter."""
    if mesh_shape is None:
        mesh_shape = draw(mesh_shapes(world_size), label="mesh_shape")
    count = draw(st.integers(1, max_params), label="parameters")
    model: list[tuple[Key, Spec]] = []
    state: list[tuple[Key, Spec]] = []
    for i in range(count):
        param = draw(
            dtensor_specs(
                world_size,
                mesh_shape=mesh_shape,
                min_dims=1,
                max_dims=2,
                max_side=7,
                dtypes=dtypes,
                kinds=placement_kinds,
            ),
            label=f"param {i}",
        )
        model.append((f"layers.{i}.{'weight' if param.tensor.ndim > 1 else 'bias'}", param))
        # optimizer states have the parameter's shape and placements but never Partial
        moment_placements = draw(
            placements_for(param.tensor, mesh_shape, kinds=_non_partial(placement_kinds))
        )
        moment = DTensorSpec(param.tensor, mesh_shape, moment_placements)
        state.append(
            (
                i,
                DictSpec(
                    (
                        ("step", TensorSpec((), "float32")),
                        ("exp_avg", moment),
                        ("exp_avg_sq", moment),
                    )
                ),
            )
        )
    buffer_dtype = draw(sampled(tuple(dtypes)))
    model.append(("norm.running_mean", TensorSpec((draw(st.integers(0, 5)),), buffer_dtype)))
    model.append(("norm.num_batches_tracked", TensorSpec((), "int64")))
    group = DictSpec(
        (
            ("lr", ValueSpec(draw(st.sampled_from([0.1, 1e-3])))),
            ("betas", SeqSpec((ValueSpec(0.9), ValueSpec(0.999)), "tuple")),
            ("weight_decay", ValueSpec(0.0)),
            ("foreach", ValueSpec(None)),
            ("params", SeqSpec(tuple(ValueSpec(i) for i in range(count)), "list")),
        )
    )
    optim = DictSpec((("state", DictSpec(tuple(state))), ("param_groups", SeqSpec((group,)))))
    return DictSpec((("model", DictSpec(tuple(model))), ("optim", optim)))


def _non_partial(kinds: Sequence[str] | None) -> tuple[str, ...]:
    from strategies.placements import registered_placements

    chosen = registered_placements() if kinds is None else tuple(kinds)
    return tuple(k for k in chosen if k != "partial") or ("replicate",)
