"""Oracle of CONTRACT all_gather_sharded_tensor."""

from __future__ import annotations

from typing import cast

import torch

from conformance.case import Case
from conformance.observation import (
    Outcome,
    TensorObs,
)
from conformance.oracle.common import (
    NONE,
    rank_inputs,
)
from conformance.vocabulary import (
    ROOT,
    pg_ranks,
)
from strategies.spec import (
    ShardedTensorSpec,
    contiguous_stride,
)


def expect_all_gather_sharded_tensor(case: Case, rank: int) -> Outcome:
    if rank not in pg_ranks(case.kwarg("pg"), case.world_size):  # outside the group: no call
        return Outcome(NONE, {})
    inputs = rank_inputs(case, case.state_dict, rank, ROOT)
    spec = cast(ShardedTensorSpec, case.state_dict)  # all_gather_sharded_cases: one ShardedTensor
    full = inputs.global_value(spec, ()).clone()  # the observation's own copy
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
