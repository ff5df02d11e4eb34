"""A target with planted bugs, to show the suite catches them (mutation tests of the harness).

Every utility is ``impl``'s except the ones patched below.
"""

from impl import *  # noqa: F403 - re-export every utility
from impl import gather_state_dict as _good_gather
from impl import offload_state_dict_to_cpu as _good_offload


def gather_state_dict(state_dict, **kwargs):
    """Bug: the last element of every gathered tensor with two or more elements is zeroed."""
    import torch

    result = _good_gather(state_dict, **kwargs)

    def spoil(value):
        if isinstance(value, dict):
            return {k: spoil(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor) and type(value) is torch.Tensor and value.numel() > 1:
            value = value.clone()
            value.view(-1)[-1] = 0
        return value

    return spoil(result)


def offload_state_dict_to_cpu(state_dict, **kwargs):
    """Bug: ignores ranks_only."""
    kwargs.pop("ranks_only", None)
    return _good_offload(state_dict, **kwargs)


_gather_state_dict = gather_state_dict
_offload_state_dict_to_cpu = offload_state_dict_to_cpu
