"""The placement models agree with torch's real DTensor on a 4-rank gloo world.

The cases come from the models' own Hypothesis strategies (derandomized, 1-2 mesh dims to
keep it fast; 300 cases on 1-3 mesh dims passed during development).

For each case every rank checks (a) where torch can distribute it (no Partial, even
_StridedShard pieces): ``distribute_tensor(global).to_local()``
equals the model's local tensor for its coordinate, and (b) always: ``DTensor.from_local``
of the model's local tensor, then ``full_tensor()``, gives back the global tensor.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import Phase, given, settings

from strategies.placements import (
    BUILTIN_PLACEMENTS,
    coordinate_of,
    partial_reduce_ops,
    shard_indices,
    split_over_mesh,
    strided_shard_indices,
    to_torch_placements,
)
from strategies.spec import DTensorSpec, PlacementSpec, TensorSpec
from strategies.tensors import dtensor_specs
from strategies.values import make_global_tensor

WORLD_SIZE = 4
TORCH_DTYPES = ("float32", "bfloat16", "int64", "int8", "uint8", "bool", "complex64", "float64")


def _cases(count: int = 40) -> list[DTensorSpec]:
    """``count`` DTensor specs from ``dtensor_specs`` (built-in kinds), derandomized."""
    cases: list[DTensorSpec] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate])
    @given(dtensor_specs(WORLD_SIZE, max_mesh_dims=2, dtypes=TORCH_DTYPES, kinds=BUILTIN_PLACEMENTS))
    def collect(spec: DTensorSpec) -> None:
        cases.append(spec)

    collect()
    return cases


def _torch_can_distribute(case: DTensorSpec) -> bool:
    """torch 2.13's ``distribute_tensor`` requires every ``_StridedShard`` split to give
    equal pieces (it asserts, on some ranks only, otherwise); ``from_local`` has no limit."""
    sizes = [case.tensor.shape]
    for n, placement in zip(case.mesh_shape, case.placements, strict=True):
        if placement.kind == "partial":
            return False
        next_sizes = []
        for shape in sizes:
            if placement.kind == "replicate":
                next_sizes.append(shape)
                continue
            dim = placement.param("dim")
            if placement.kind == "shard":
                pieces = [len(p) for p in shard_indices(shape[dim], n)]
            else:
                sf = placement.param("split_factor")
                pieces = [len(p) for p in strided_shard_indices(shape[dim], n, sf)]
                if len(set(pieces)) > 1:
                    return False
            next_sizes += [(*shape[:dim], k, *shape[dim + 1 :]) for k in pieces]
        sizes = next_sizes
    return True


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if a.is_floating_point():
        return bool(torch.allclose(a.double(), b.double(), equal_nan=True, rtol=1e-2, atol=0))
    return bool(torch.equal(a, b))


def _worker(rank: int, init_file: str, out_dir: str, cases: list[DTensorSpec]) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=4)
    failures = []
    meshes = {}
    for index, case in enumerate(cases):
        spec, mesh_shape, placements = case.tensor, case.mesh_shape, case.placements
        try:
            if mesh_shape not in meshes:
                meshes[mesh_shape] = init_device_mesh("cpu", mesh_shape)
            mesh = meshes[mesh_shape]
            global_tensor = make_global_tensor(spec, seed=index, path=("case",))
            generator = torch.Generator().manual_seed(index)
            mine = split_over_mesh(global_tensor, mesh_shape, placements, generator)[
                coordinate_of(rank, mesh_shape)
            ]
            assert tuple(mesh.get_coordinate()) == coordinate_of(rank, mesh_shape)
            torch_placements = to_torch_placements(placements)
            if _torch_can_distribute(case):
                local = distribute_tensor(global_tensor, mesh, torch_placements).to_local()
                if not _same(local, mine):
                    failures.append(f"case {index} {case}: local {local} vs {mine}")
            dt = DTensor.from_local(
                mine,
                mesh,
                torch_placements,
                shape=global_tensor.shape,
                stride=global_tensor.stride(),
            )
            full = dt.full_tensor()
            if not _same(full, global_tensor):
                failures.append(f"case {index} {case}: full {full} vs {global_tensor}")
        except Exception:
            failures.append(f"case {index} {case}: {traceback.format_exc()}")
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(failures, f)
    # gloo aborts a rank (SIGABRT) whose group is destroyed while a peer still talks to it:
    # meet first.
    dist.barrier()
    dist.destroy_process_group()


def _failures_on_torch(cases: list[DTensorSpec]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        args = (os.path.join(tmp, "init"), tmp, cases)
        mp.spawn(_worker, args=args, nprocs=WORLD_SIZE, join=True)
        failures = []
        for rank in range(WORLD_SIZE):
            with open(os.path.join(tmp, f"rank{rank}.json")) as f:
                failures += [f"rank {rank}: {msg}" for msg in json.load(f)]
    return failures


@pytest.mark.world_size(WORLD_SIZE)
def test_placement_models_match_torch_dtensor() -> None:
    failures = _failures_on_torch(_cases())
    assert not failures, "\n".join(failures[:10])


def _every_partial_op() -> list[DTensorSpec]:
    """A Partial DTensor for every (dtype, reduce op) the model offers, on a 4-rank 1-D mesh
    and on a 2x2 mesh with that op on both dims (sides uneven, one element 0-d)."""
    cases = []
    for dtype in TORCH_DTYPES:
        for op in partial_reduce_ops(dtype):
            partial = PlacementSpec("partial", (("reduce_op", op),))
            cases.append(DTensorSpec(TensorSpec((5, 3), dtype), (4,), (partial,)))
            cases.append(DTensorSpec(TensorSpec((), dtype), (2, 2), (partial, partial)))
            shard = PlacementSpec("shard", (("dim", 0),))
            cases.append(DTensorSpec(TensorSpec((3, 2), dtype), (2, 2), (shard, partial)))
    return cases


@pytest.mark.world_size(WORLD_SIZE)
def test_partial_model_matches_torch_for_every_reduce_op() -> None:
    cases = _every_partial_op()
    assert {p.param("reduce_op") for c in cases for p in c.placements if p.kind == "partial"} == {
        "sum",
        "avg",
        "max",
        "min",
        "product",
        "band",
        "bor",
        "bxor",
    }
    failures = _failures_on_torch(cases)
    assert not failures, "\n".join(failures[:10])
