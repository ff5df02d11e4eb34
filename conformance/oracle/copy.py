"""Oracle of CONTRACT copy_state_dict, create_cpu_state_dict and check_state_dict_similarity."""

from __future__ import annotations

from typing import Any, cast

from conformance.case import Case
from conformance.observation import (
    ANY,
    Outcome,
    RaisedObs,
    ValueObs,
)
from conformance.oracle.common import (
    has_accelerator,
    new_tree,
    other_spec,
    rank_inputs,
    type_check_error,
)
from conformance.oracle.inputs import (
    map_spec,
    value_obs,
)
from conformance.vocabulary import (
    ROOT,
    TENSOR_SPECS,
    pair_mismatch,
)
from strategies.spec import (
    Leaf,
    Path,
    ShardedTensorSpec,
    TensorLeaf,
    contiguous_stride,
    format_path,
    iter_leaves,
)


def expect_copy_state_dict(case: Case, rank: int) -> Outcome:
    source = rank_inputs(case, case.state_dict, rank, ROOT)
    other = other_spec(case)
    dest = rank_inputs(case, other, rank, "copy_state_dict", seed_offset=1)
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


def expect_create_cpu_state_dict(case: Case, rank: int) -> Outcome:
    inputs = rank_inputs(case, case.state_dict, rank, ROOT)
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


def expect_check_state_dict_similarity(case: Case, rank: int) -> Outcome:
    first = rank_inputs(case, case.state_dict, rank, ROOT)
    other = other_spec(case)
    second = rank_inputs(case, other, rank, "compared_state_dict", seed_offset=1)
    untouched = {ROOT: first.observe_all(), "compared_state_dict": second.observe_all()}
    similar = pair_mismatch(case.state_dict, other, rank, case.world_size, local=False) is None
    return Outcome(ValueObs("bool", similar), untouched)
