"""Every effect is observed: a fork that gets one of them wrong fails with ``--expected torch``.

Each bug below passed the ci profile before the observation covered it (issue 10): outputs of
``create_cpu_state_dict`` sharing one buffer, a result that *is* its input container, a
``BytesIO`` leaf copied or read to its end, gathered tensors requiring grad, new buffers that
are not contiguous, ShardedTensor local shards of the wrong shape, and a loading bug that
shows only on a mesh with two dims larger than 1; and bugs that only the issue's draws reach
(changed defaults, Partial product/bitwise ops, non-pair entries of ``distribute_tensors``,
wide unsigned dtypes, uneven ``_StridedShard``, ``gather_state_dict`` on a subgroup pg,
ShardedTensor entries a load replaces, unsupported leaves on one rank only, several
ShardedTensor chunks on one rank). Forks are judged with torch's own
known-divergence file, so a bug is caught only by a difference no entry excuses.
"""

from __future__ import annotations

import pytest

from conformance.divergences import load_divergences
from tests.planted import PlantedBug, assert_caught, fork_worlds

CREATE_NEW_BUFFER = "        else:\n            return torch.empty(*tuple(obj.size()), dtype=obj.dtype)\n"
PASS_THROUGH = "        ret = iter_object\n    elif isinstance(iter_object, dict):\n"

OBSERVATION_BUGS: tuple[PlantedBug, ...] = (
    PlantedBug(
        "create-cpu-outputs-share-one-buffer",
        (),
        "create_cpu_state_dict",
        CREATE_NEW_BUFFER,
        "        else:\n"
        "            cache = _create_cpu_state_dict.__dict__.setdefault('buffers', {})\n"
        "            key = (tuple(obj.size()), obj.dtype)\n"
        "            if key not in cache:\n"
        "                cache[key] = torch.empty(*tuple(obj.size()), dtype=obj.dtype)\n"
        "            return cache[key]\n",
        r"shares storage with is output",
    ),
    PlantedBug(
        "offload-returns-its-input",
        (),
        "offload_state_dict_to_cpu",
        "        type_check=type_check,\n    )\n    return ret\n\n\n@torch.no_grad()\ndef _copy_state_dict(",
        "        type_check=type_check,\n    )\n    return state_dict\n\n\n@torch.no_grad()\ndef _copy_state_dict(",
        r"^rank \d, state_dict: is the input object state_dict, expected a new object",
    ),
    PlantedBug(
        "gather-copies-bytesio",
        (),
        "gather_state_dict",
        PASS_THROUGH,
        "        ret = io.BytesIO(iter_object.getvalue()) if isinstance(iter_object, io.BytesIO) else iter_object\n"
        "    elif isinstance(iter_object, dict):\n",
        r"is a new object, expected the input object state_dict",
    ),
    PlantedBug(
        "gather-reads-bytesio",
        (),
        "gather_state_dict",
        PASS_THROUGH,
        "        ret = iter_object\n"
        "        if isinstance(iter_object, io.BytesIO):\n"
        "            iter_object.read()\n"
        "    elif isinstance(iter_object, dict):\n",
        r"position is \d+, expected 0",
    ),
    PlantedBug(
        "gather-requires-grad",
        (),
        "gather_state_dict",
        "        if isinstance(value, AsyncCollectiveTensor):\n            value = value.wait()\n        return value\n",
        "        if isinstance(value, AsyncCollectiveTensor):\n            value = value.wait()\n"
        "        if value.is_floating_point():\n"
        "            value = value.detach().requires_grad_()\n"
        "        return value\n",
        r"requires_grad is True, expected False",
    ),
    PlantedBug(
        "create-cpu-buffers-not-contiguous",
        (),
        "create_cpu_state_dict",
        CREATE_NEW_BUFFER,
        "        else:\n"
        "            size = tuple(obj.size())\n"
        "            t = torch.empty(*reversed(size), dtype=obj.dtype)\n"
        "            return t.permute(*reversed(range(len(size))))\n",
        r"stride is",
    ),
    PlantedBug(
        "create-cpu-sharded-shards-flattened",
        (),
        "create_cpu_state_dict",
        "            shards.tensor = tensor_func(shards.tensor, pg, device, None)\n",
        "            shards.tensor = tensor_func(shards.tensor.reshape(-1), pg, device, None)\n",
        r"local_shapes is",
    ),
    PlantedBug(
        "distribute-2d-mesh-placements-swapped",
        (),
        "distribute_state_dict",
        "                    local_state.device_mesh,\n                    local_state.placements,\n                )\n",
        "                    local_state.device_mesh,\n"
        "                    local_state.placements\n"
        "                    if min(local_state.device_mesh.shape) < 2\n"
        "                    else local_state.placements[::-1],\n"
        "                )\n",
        r"local_state_dict\[.*(data differs|placements is)",
        world_sizes=(2, 4),
        examples=1,  # the 2x2 examples come first
    ),
)

#: In-place loading (CONTRACT broadcast_state_dict step 3): a DTensor entry keeps its object.
IN_PLACE_BUGS: tuple[PlantedBug, ...] = (
    PlantedBug(
        "broadcast-replaces-dtensor-entries",
        (),
        "broadcast_state_dict",
        "            ret = local_state\n"
        "            # Copy full_tensor[slices] into local_state.to_local() to reduce memory footprint.\n"
        "            ret.to_local().copy_(full_tensor[tuple(slices)])\n",
        "            ret = DTensor.from_local(\n"
        "                full_tensor[tuple(slices)].clone(), local_state.device_mesh, local_state.placements,\n"
        "                shape=local_state.shape, stride=local_state.stride(),\n"
        "            )\n",
        r"is a new object, expected the input object local_state_dict",
    ),
)

#: Bugs of what the strategies draw (issue 10's "Draw" bullets): each is caught only because
#: the feature it needs is drawn.
REACH_BUGS: tuple[PlantedBug, ...] = (
    PlantedBug(  # defaults: a keyword argument is omitted as often as it is passed
        "gather-type-check-off-by-default",
        (),
        "gather_state_dict",
        "    cpu_offload: bool = False,\n    ranks_only: tuple[int, ...] = (),\n    type_check: bool = True,\n",
        "    cpu_offload: bool = False,\n    ranks_only: tuple[int, ...] = (),\n    type_check: bool = False,\n",
        r"expected to raise ValueError",
        unsupported=True,  # an unsupported leaf in every case; type_check stays drawn (or omitted)
    ),
    PlantedBug(
        "broadcast-strict-by-default",
        (),
        "broadcast_state_dict",
        "    strict: bool = False,\n",
        "    strict: bool = True,\n",
        r"local_state_dict: keys are \[",
    ),
    PlantedBug(
        "create-cpu-shares-memory-by-default",
        (),
        "create_cpu_state_dict",
        "    state_dict: dict[str, Any], pin_memory: bool = False, share_memory: bool = False\n",
        "    state_dict: dict[str, Any], pin_memory: bool = False, share_memory: bool = True\n",
        r"shared",
    ),
    PlantedBug(  # Partial with every reduce op: product and bitwise ones gathered as sums
        "gather-product-and-bitwise-partials-as-sum",
        (),
        "gather_state_dict",
        "        placements = [Replicate() for _ in value.placements]\n",
        "        from torch.distributed.tensor import Partial\n"
        "        if any(p.is_partial() and p.reduce_op in ('product', 'band', 'bor', 'bxor') for p in value.placements):\n"
        "            value = DTensor.from_local(value.to_local(), value.device_mesh,\n"
        "                [Partial('sum') if p.is_partial() else p for p in value.placements],\n"
        "                run_check=False, shape=value.shape, stride=value.stride())\n"
        "        placements = [Replicate() for _ in value.placements]\n",
        r"data differs",
        world_sizes=(2, 4),
        examples=60,
    ),
    PlantedBug(  # distribute_tensors: entries that are no (DTensor, full tensor) pair
        "distribute-tensors-unpacks-plain-tensors",
        (),
        "distribute_tensors",
        "        if _local_state is None or torch.is_tensor(_local_state):\n",
        "        if _local_state is None or isinstance(_local_state, DTensor):\n",
        r"raised",
        world_sizes=(2, 4),
        examples=40,
    ),
    PlantedBug(  # sub-group pg: chunk sizes from the default group's size, not the pg's
        "all-gather-sharded-sizes-chunks-by-world",
        (),
        "all_gather_sharded_tensor",
        "    world_size = dist.get_world_size(pg)\n",
        "    world_size = dist.get_world_size()\n",
        r"raised|data differs",
        world_sizes=(2, 4),
        examples=60,
    ),
    PlantedBug(  # uneven _StridedShard: padded to even pieces and never unpadded
        "gather-uneven-strided-padded",
        (),
        "gather_state_dict",
        (
            "        placements = [Replicate() for _ in value.placements]\n",
            "        value = value.to_local()\n",
        ),
        (
            "        from torch.distributed.tensor.placement_types import _StridedShard\n"
            "        sides = [(p.dim, p.split_factor * value.device_mesh.size(i)) for i, p in enumerate(value.placements)\n"
            "                 if isinstance(p, _StridedShard) and p.split_factor > 1]\n"
            "        pad = [(d, m) for d, m in sides if value.shape[d] % m]\n"
            "        placements = [Replicate() for _ in value.placements]\n",
            "        value = value.to_local()\n"
            "        for dim, m in pad:\n"
            "            extra = list(value.shape)\n"
            "            extra[dim] = m - value.shape[dim] % m\n"
            "            value = torch.cat([value, value.new_zeros(extra)], dim)\n",
        ),
        r"shape is",
        world_sizes=(2, 4),
        examples=80,
    ),
    PlantedBug(  # several chunks on one rank: only a rank's first local shard copied
        "copy-sharded-first-local-shard-only",
        (),
        "copy_state_dict",
        "                    for idx, shard in enumerate(companion_obj.local_shards()):\n",
        "                    for idx, shard in enumerate(companion_obj.local_shards()[:1]):\n",
        r"^rank \d, copy_state_dict.*data differs",
        world_sizes=(2, 4),
        examples=80,
    ),
    PlantedBug(  # error paths: a DTensor in full_state_dict refused with the wrong exception
        "broadcast-refuses-dtensor-in-full-with-type-error",
        (),
        "broadcast_state_dict",
        "    # will be removed from `local_state_dict`.\n    ret = {}\n",
        "    # will be removed from `local_state_dict`.\n"
        "    if any(isinstance(v, DTensor) for v in full_state_dict.values()):\n"
        "        raise TypeError('full_state_dict holds a DTensor')\n"
        "    ret = {}\n",
        r"raised TypeError",
        world_sizes=(2, 4),
        examples=60,
    ),
    PlantedBug(  # sub-group pg for gather: ranks_only read as global ranks, not the pg's ranks
        "gather-ranks-only-by-global-rank",
        (),
        "gather_state_dict",
        "    if not ranks_only or dist.get_rank(pg) in ranks_only:\n",
        "    if not ranks_only or dist.get_rank() in ranks_only:\n",
        r"^rank \d, state_dict",
        world_sizes=(2, 4),
        examples=80,
    ),
    PlantedBug(  # loading into a ShardedTensor entry: kept instead of replaced by the full tensor
        "broadcast-keeps-sharded-tensor-entries",
        (),
        "broadcast_state_dict",
        "        if (local_state := local_state_dict.get(key)) is None:\n",
        "        if (local_state := local_state_dict.get(key)) is None or type(local_state).__name__ == 'ShardedTensor':\n",
        r"local_state_dict\[.*(class|kind) is ShardedTensor",
        world_sizes=(2, 4),
        examples=60,
    ),
    PlantedBug(  # an unsupported leaf on one rank only: a local utility that agrees on errors
        "offload-type-check-agreed-across-ranks",
        (),
        "offload_state_dict_to_cpu",
        "        cpu_offload=True,\n        ranks_only=ranks_only,\n        type_check=type_check,\n    )\n    return ret\n",
        "        cpu_offload=True,\n        ranks_only=ranks_only,\n        type_check=False,\n    )\n"
        "    if type_check:\n"
        "        bad = torch.tensor([int(not _all_supported(state_dict))])\n"
        "        dist.all_reduce(bad)\n"
        "        if bad.item():\n"
        "            raise ValueError('Unexpected value type on some rank')\n"
        "    return ret\n\n\n"
        "def _all_supported(obj):\n"
        "    if isinstance(obj, dict):\n"
        "        return all(_all_supported(v) for v in obj.values())\n"
        "    if isinstance(obj, (list, tuple)):\n"
        "        return all(_all_supported(v) for v in obj)\n"
        "    return obj is None or isinstance(obj, (torch.Tensor, int, float, str, bytes, io.BytesIO))\n",
        r"^rank \d, state_dict: raised ValueError",
        examples=60,
    ),
    PlantedBug(  # every dtype: wide unsigned and float8 buffers widened (no collective involved)
        "create-cpu-widens-exotic-buffers",
        (),
        "create_cpu_state_dict",
        "        _: Any,\n    ) -> torch.Tensor:\n        if len(obj.size()) == 0:\n",
        "        _: Any,\n    ) -> torch.Tensor:\n"
        "        wide = {torch.uint16: torch.int64, torch.uint32: torch.int64, torch.uint64: torch.int64,\n"
        "                torch.float8_e4m3fn: torch.float32, torch.float8_e5m2: torch.float32}\n"
        "        obj = obj.to(wide[obj.dtype]) if obj.dtype in wide else obj\n"
        "        if len(obj.size()) == 0:\n",
        r"dtype",
        kwargs=(("pin_memory", None),),  # pinning raises here, before any buffer is made
        examples=250,  # a plain wide unsigned or float8 tensor is in about one case in twenty
    ),
)

_BY_NAME = {bug.name: bug for bug in OBSERVATION_BUGS + IN_PLACE_BUGS + REACH_BUGS}
TORCH = load_divergences("torch")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    yield from fork_worlds(_BY_NAME.values(), tmp_path_factory.mktemp("observation"))


@pytest.mark.parametrize("name", list(_BY_NAME))
def test_an_effect_the_fork_gets_wrong_is_caught(name, worlds):
    assert_caught(_BY_NAME[name], worlds, TORCH)
