"""Strategies built once per configuration (issue 13): the same object for the same
configuration, never one configuration's strategy for another's, and the placement registry
still read at draw time."""

from __future__ import annotations

from hypothesis import find, settings

from strategies.built import built_once, sampled
from strategies.placements import register_placement, unregister_placement
from strategies.tensors import dtensor_specs, mesh_shapes, tensor_specs
from tests.example_placement import EvenShard


def test_the_same_configuration_gives_the_same_strategy_object():
    assert tensor_specs(max_side=3, dtypes=("float32",)) is tensor_specs(max_side=3, dtypes=("float32",))
    assert mesh_shapes(4) is mesh_shapes(4)
    assert mesh_shapes(4) is not mesh_shapes(2)


def test_equal_values_of_other_types_get_their_own_strategy():
    assert sampled((0, 1)) is not sampled((False, True))
    assert find(sampled((False, True)), lambda v: True) is False


def test_unhashable_arguments_build_afresh():
    calls = []

    @built_once
    def factory(items):
        calls.append(items)
        return object()

    assert factory([1]) is not factory([1])
    assert factory((1,)) is factory((1,))
    assert len(calls) == 3


def test_a_placement_registered_after_the_strategy_was_built_is_drawn():
    strategy = dtensor_specs(2, mesh_shape=(2,), min_dims=1)
    find(strategy, lambda d: True)  # built and drawn before the registration
    register_placement(EvenShard())
    try:
        found = find(
            strategy,
            lambda d: d.placements[0].kind == "even_shard",
            settings=settings(max_examples=2000, database=None),
        )
        assert found.placements[0].kind == "even_shard"
    finally:
        unregister_placement("even_shard")
