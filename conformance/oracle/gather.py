"""Oracle of CONTRACT gather_state_dict and offload_state_dict_to_cpu."""

from __future__ import annotations

from typing import Any

from conformance.case import Case
from conformance.observation import (
    Container,
    Outcome,
    TensorObs,
)
from conformance.oracle.common import (
    NONE,
    new_tree,
    rank_inputs,
    reduction_tolerance,
    type_check_error,
)
from conformance.oracle.inputs import (
    RankInputs,
    map_spec,
    value_obs,
)
from conformance.vocabulary import (
    ROOT,
    TENSOR_SPECS,
    pg_ranks,
)
from strategies.spec import (
    DictSpec,
    DTensorSpec,
    Leaf,
    Path,
    ShardedTensorSpec,
    Spec,
    TensorLeaf,
    TensorSpec,
    format_path,
)


def _type_check_and_ranks_only(
    case: Case, rank: int, ranks_only_rank: int
) -> tuple[RankInputs, dict[str, Any], Outcome | None]:
    """The rank's inputs, the input tree observed untouched, and the outcome where rule 4
    (type_check) raises or rule 5 (``ranks_only``, naming ``ranks_only_rank``) drops the
    result before any work; None where the call goes on."""
    inputs = rank_inputs(case, case.state_dict, rank, ROOT)
    untouched = {ROOT: inputs.observe_all()}
    error = type_check_error(case.state_dict, case)
    if error is not None:
        return inputs, untouched, Outcome(error, untouched)
    ranks_only = case.kwarg("ranks_only", ())
    if ranks_only and ranks_only_rank not in ranks_only:
        return inputs, untouched, Outcome(_dropped(case.state_dict), untouched)
    return inputs, untouched, None


def expect_gather_state_dict(case: Case, rank: int) -> Outcome:
    """Ranks outside a subgroup ``pg`` make no call; ``ranks_only`` names group ranks."""
    members = pg_ranks(case.kwarg("pg"), case.world_size)
    if rank not in members:  # outside a subgroup pg: no call
        return Outcome(NONE, {})
    inputs, untouched, early = _type_check_and_ranks_only(case, rank, members.index(rank))
    if early is not None:
        return early

    offload = bool(case.kwarg("cpu_offload", False))
    gathered_on = "cpu" if offload else inputs.device_type

    def leaf(path: Path, spec: Leaf) -> Any:
        if isinstance(spec, TensorSpec):  # the same object unless it must move to CPU
            return _moved_to_cpu_or_same(inputs, spec, path, moves=offload and inputs.device_type != "cpu")
        if isinstance(spec, (DTensorSpec, ShardedTensorSpec)):
            tolerance = reduction_tolerance(spec) if isinstance(spec, DTensorSpec) else None
            full = inputs.global_value(spec, path).clone()  # the observation's own copy
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


def expect_offload_state_dict_to_cpu(case: Case, rank: int) -> Outcome:
    """``ranks_only`` names global ranks here (a local utility has no group)."""
    inputs, untouched, early = _type_check_and_ranks_only(case, rank, rank)
    if early is not None:
        return early

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
