"""The oracle is device-aware: in an NCCL world (ranks on ``cuda:<rank>``) its expectations
follow CONTRACT.md's device rules, checked here without a GPU, with the backend as a parameter.

Each expectation below is read off the contract text (not computed by the oracle's helpers):
gathered DTensors on the mesh's device then CPU if ``cpu_offload``; offload makes new CPU
tensors of accelerator tensors and returns CPU ones as they are; ``create_cpu_state_dict``
buffers on CPU, pinned when non-empty and ``pin_memory`` (raising without an accelerator);
loaded plain tensors on ``device`` (CPU if ``cpu_offload``), DTensor pieces on the mesh's
device; ``all_gather_sharded_tensor`` on the group's device.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from conformance import mesh_examples
from conformance.case import Case
from conformance.observation import Container, RaisedObs, TensorObs
from conformance.utilities import expected_outcomes

RANK_DEVICE = {"gloo": "cpu", "nccl": "cuda"}


def _tensors(node) -> list[TensorObs]:
    if isinstance(node, Container):
        return [t for child in node.children for t in _tensors(child)]
    return [node] if isinstance(node, TensorObs) else []


def _example(utility: str, backend: str, **kwargs) -> Case:
    (case,) = mesh_examples.examples(utility)
    return replace(case, backend=backend).with_kwargs(**kwargs)


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_inputs_are_observed_on_the_ranks_device(backend: str) -> None:
    for outcome in expected_outcomes(_example("check_state_dict_similarity", backend)):
        devices = {t.device_type for tree in outcome.mutated.values() for t in _tensors(tree)}
        assert devices == {RANK_DEVICE[backend]}


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
@pytest.mark.parametrize("cpu_offload", [False, True])
def test_gathered_tensors_on_the_mesh_device_then_cpu(backend: str, cpu_offload: bool) -> None:
    want = "cpu" if cpu_offload else RANK_DEVICE[backend]
    for outcome in expected_outcomes(_example("gather_state_dict", backend, cpu_offload=cpu_offload)):
        tensors = _tensors(outcome.result)
        assert {t.device_type for t in tensors} == {want}
        plain = [t for t in tensors if t.cls == "Tensor" and t.same_as is not None]
        # a plain tensor stays the same object unless it must move to CPU
        assert bool(plain) == (want == RANK_DEVICE[backend])


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_offload_copies_accelerator_tensors_only(backend: str) -> None:
    for outcome in expected_outcomes(_example("offload_state_dict_to_cpu", backend)):
        tensors = _tensors(outcome.result)
        assert {t.device_type for t in tensors} == {"cpu"}
        same = {t.same_as is not None for t in tensors}
        assert same == ({True} if backend == "gloo" else {False})


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
@pytest.mark.parametrize("machine_gpu", [False, True])
def test_create_cpu_pins_where_an_accelerator_is(backend: str, machine_gpu: bool, monkeypatch) -> None:
    """pin_memory=True raises only where no accelerator is: not in an NCCL world, nor in a gloo
    world on a machine with a GPU (the ranks can pin there)."""
    from conformance.oracle import common

    monkeypatch.setattr(common, "machine_has_accelerator", lambda: machine_gpu)
    for outcome in expected_outcomes(_example("create_cpu_state_dict", backend, pin_memory=True)):
        if backend == "gloo" and not machine_gpu:
            assert isinstance(outcome.result, RaisedObs) and outcome.result.type_name == "RuntimeError"
            continue
        tensors = _tensors(outcome.result)
        assert {t.device_type for t in tensors} == {"cpu"}
        assert all(t.pinned == (t.local_shape is not None and 0 not in t.local_shape) for t in tensors)


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
@pytest.mark.parametrize("cpu_offload", [False, True])
def test_loaded_entries_on_the_device_argument_or_cpu(backend: str, cpu_offload: bool) -> None:
    case = _example("broadcast_state_dict", backend, cpu_offload=cpu_offload)
    for outcome in expected_outcomes(case):
        loaded = _tensors(outcome.mutated["local_state_dict"])
        assert {t.device_type for t in loaded} == {"cpu" if cpu_offload else RANK_DEVICE[backend]}
    on_cpu = replace(case, kwargs=(("device", "cpu"),))
    for outcome in expected_outcomes(on_cpu):  # plain entries follow `device`
        assert {t.device_type for t in _tensors(outcome.mutated["local_state_dict"])} <= {
            "cpu",
            RANK_DEVICE[backend],
        }


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_distributed_and_all_gathered_on_the_ranks_device(backend: str) -> None:
    for outcome in expected_outcomes(_example("distribute_tensors", backend)):
        assert {t.device_type for t in _tensors(outcome.mutated["local_state_dict"])} == {
            RANK_DEVICE[backend]
        }
    for outcome in expected_outcomes(_example("all_gather_sharded_tensor", backend)):
        assert outcome.result.device_type == RANK_DEVICE[backend]


def test_an_nccl_run_draws_nccl_cases():
    """A run's backend reaches its cases (the oracle places their tensors by it; gloo draws are
    the strategy's own, which tests/test_strategies_stable.py fingerprints)."""
    from hypothesis import given, settings

    from conformance.utilities import case_strategy

    backends = set()

    @settings(max_examples=10, database=None)
    @given(case=case_strategy("law:offload_after_gather", (2,), "nccl"))
    def draw(case):
        backends.add(case.backend)

    draw()
    assert backends == {"nccl"}
