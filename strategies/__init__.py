"""Hypothesis strategies that draw case specs: nested state-dict trees, tensors, meshes and
placements. Pure data; nothing here touches a process group.

- :mod:`strategies.spec`: the spec types, JSON round trip, tree walking.
- :mod:`strategies.placements`: the placement registry and single-process placement models.
- :mod:`strategies.values`: deterministic tensor values for specs.
- :mod:`strategies.tensors`, :mod:`strategies.trees`: the Hypothesis strategies.
"""

from strategies.placements import (
    BUILTIN_PLACEMENTS,
    PlacementModel,
    coordinate_of,
    get_placement_model,
    join_over_mesh,
    load_placement,
    partial_reduce_ops,
    register_placement,
    registered_placements,
    split_over_mesh,
    to_torch_placements,
    unregister_placement,
)
from strategies.spec import (
    LAYOUTS,
    UNSUPPORTED_KINDS,
    BytesIOSpec,
    DictSpec,
    DTensorSpec,
    Leaf,
    Path,
    PlacementSpec,
    SeqSpec,
    ShardedTensorSpec,
    Spec,
    TensorSpec,
    UnsupportedSpec,
    ValueSpec,
    chunk_bounds,
    format_path,
    iter_leaves,
    layout_footprint,
    namedtuple_type,
    replace_leaves,
    spec_from_json,
    spec_to_json,
    torch_dtype,
    tree_depth,
)
from strategies.tensors import (
    ALL_DTYPES,
    GLOO_DTYPES,
    dtensor_specs,
    dtypes,
    layouts_for,
    mesh_factorisations,
    mesh_shapes,
    placements_for,
    shapes,
    sharded_tensor_specs,
    tensor_specs,
)
from strategies.trees import (
    CONTAINER_KINDS,
    LEAF_KINDS,
    flat_state_dict_specs,
    keys,
    leaf_specs,
    model_optim_state_dicts,
    python_values,
    share_groups,
    state_dict_specs,
)
from strategies.values import (
    make_global_tensor,
    make_plain_tensor,
    share_group_footprints,
    stable_seed,
    view_in_layout,
)

__all__ = [name for name in dir() if not name.startswith("_")]
