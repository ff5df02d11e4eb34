"""What worlds this machine (or this torchrun launch) can have: backends and sizes."""

from __future__ import annotations

import os

from conformance.world.protocol import WorldUnavailable

BACKENDS = ("gloo", "nccl")
LAUNCHERS = ("spawn", "torchrun")
MAX_WORLD_SIZE = 8


def max_world_size() -> int:
    """Spawned worlds stop at MAX_WORLD_SIZE; under torchrun the launched world sets the limit."""
    launched = os.environ.get("SDC_LAUNCHER") == "torchrun" or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and os.environ.get("WORLD_SIZE"):
        return max(MAX_WORLD_SIZE, int(os.environ["WORLD_SIZE"]))
    return MAX_WORLD_SIZE


def check_nccl_available(size: int) -> None:
    """Raise :class:`WorldUnavailable` unless ``size`` CUDA devices and NCCL are present."""
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        raise WorldUnavailable("backend nccl needs CUDA GPUs; this machine has none (use gloo)")
    if not dist.is_nccl_available():
        raise WorldUnavailable("backend nccl is not available in this torch build (use gloo)")
    if torch.cuda.device_count() < size:
        raise WorldUnavailable(
            f"backend nccl with {size} ranks needs {size} GPUs; this machine has {torch.cuda.device_count()}"
        )
