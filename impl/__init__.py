"""Reference implementation of torch.distributed._state_dict_utils (see CONTRACT.md).

Public names are unprefixed; torch's underscored names are aliases so this package is a
drop-in target.
"""

from __future__ import annotations

from .broadcast import (
    TensorInfo,
    broadcast_state_dict,
    broadcast_tensors,
    distribute_state_dict,
    distribute_tensors,
)
from .copy import check_state_dict_similarity, copy_state_dict
from .cpu import create_cpu_state_dict
from .flatten import flatten_state_dict, unflatten_state_dict
from .gather import gather_state_dict, offload_state_dict_to_cpu
from .sharded import all_gather_sharded_tensor

_gather_state_dict = gather_state_dict
_offload_state_dict_to_cpu = offload_state_dict_to_cpu
_copy_state_dict = copy_state_dict
_create_cpu_state_dict = create_cpu_state_dict
_check_state_dict_similarity = check_state_dict_similarity
_distribute_tensors = distribute_tensors
_broadcast_tensors = broadcast_tensors
_broadcast_state_dict = broadcast_state_dict
_distribute_state_dict = distribute_state_dict
_flatten_state_dict = flatten_state_dict
_unflatten_state_dict = unflatten_state_dict
_all_gather_sharded_tensor = all_gather_sharded_tensor
_TensorInfo = TensorInfo

__all__ = [
    "TensorInfo",
    "all_gather_sharded_tensor",
    "broadcast_state_dict",
    "broadcast_tensors",
    "check_state_dict_similarity",
    "copy_state_dict",
    "create_cpu_state_dict",
    "distribute_state_dict",
    "distribute_tensors",
    "flatten_state_dict",
    "gather_state_dict",
    "offload_state_dict_to_cpu",
    "unflatten_state_dict",
]
