"""impl.flatten_state_dict and impl.unflatten_state_dict (single process)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch

import impl

Pair = namedtuple("Pair", ["first", "second"])


def test_flatten_state_dict_keys_paths_and_identity() -> None:
    t = torch.ones(2)
    state = {
        "model": {"w": t, "layers": [{"b": 1}, {"b": 2}]},
        "opt": OrderedDict(step=3, pair=Pair("x", None)),
        7: {8: "int keys"},
        "empty": {"d": {}, "l": [], "t": ()},
    }
    flat, mapping = impl.flatten_state_dict(state)
    assert flat == {
        "model.w": t,
        "model.layers.0.b": 1,
        "model.layers.1.b": 2,
        "opt.step": 3,
        "opt.pair.0": "x",
        "opt.pair.1": None,
        "7.8": "int keys",
    }
    assert flat["model.w"] is t
    assert list(flat) == list(mapping)
    assert mapping["model.layers.1.b"] == ("model", "layers", 1, "b")
    assert mapping["7.8"] == ("7", "8")
    assert mapping["opt.pair.0"] == ("opt", "pair", 0)


def test_flatten_state_dict_duplicate_key() -> None:
    with pytest.raises(ValueError, match=r"duplicated flatten key a\.b"):
        impl.flatten_state_dict({"a.b": 1, "a": {"b": 2}})
    with pytest.raises(ValueError, match=r"duplicated flatten key 1"):
        impl.flatten_state_dict({1: "int", "1": "str"})


def test_unflatten_state_dict_round_trip() -> None:
    t = torch.arange(3)
    state = {"a": {"b": [t, {"c": 1}], "d": "s"}, "e": 2.5}
    flat, mapping = impl.flatten_state_dict(state)
    nested = impl.unflatten_state_dict(flat, mapping)
    assert nested == {"a": {"b": [t, {"c": 1}], "d": "s"}, "e": 2.5}
    assert nested["a"]["b"][0] is t


def test_unflatten_state_dict_kinds_and_gaps() -> None:
    state = {"t": (1, Pair(2, 3)), "o": OrderedDict(x=1), 5: {"k": 1}}
    nested = impl.unflatten_state_dict(*impl.flatten_state_dict(state))
    assert nested == {"t": [1, [2, 3]], "o": {"x": 1}, "5": {"k": 1}}
    assert type(nested["t"]) is list and type(nested["o"]) is dict
    nested = impl.unflatten_state_dict({"k": "v"}, {"k": ("a", 2, "b")})
    assert nested == {"a": [None, None, {"b": "v"}]}
    with pytest.raises(KeyError):
        impl.unflatten_state_dict({"missing": 1}, {})
