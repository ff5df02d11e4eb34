"""Container kinds and type checks shared by every utility (single process, via offload/create)."""

from __future__ import annotations

import io
from collections import OrderedDict, defaultdict, namedtuple

import pytest
import torch

import impl

Pair = namedtuple("Pair", ["first", "second"])


class Tagged(dict):
    """A dict subclass with an attribute that must survive."""

    tag = "class"


class Items(list):
    pass


class NeedsArgs(dict):
    def __init__(self, required, *args) -> None:
        super().__init__(*args)
        self.required = required


@pytest.mark.parametrize(
    "utility",
    [impl.offload_state_dict_to_cpu, impl.create_cpu_state_dict],
    ids=["offload", "create_cpu"],
)
def test_container_kinds_preserved(utility) -> None:
    factory = defaultdict(list, {"x": torch.ones(1)})
    tagged = Tagged(a=torch.ones(1))
    tagged.extra = "instance"
    state = {
        "ordered": OrderedDict([("z", torch.ones(1)), ("a", 1)]),
        "default": factory,
        "tagged": tagged,
        "pair": Pair(torch.ones(1), Pair(1, 2)),
        "tuple": (torch.ones(1), ()),
        "items": Items([torch.ones(1)]),
        "size": torch.Size([2, 3]),
        "needs": NeedsArgs("r", {"k": torch.ones(1)}),
        "empty": {"d": {}, "l": [], "t": ()},
        "deep": [[[[{"k": (torch.ones(1),)}]]]],
    }
    out = utility(state)
    assert type(out) is dict and list(out) == list(state)
    assert type(out["ordered"]) is OrderedDict and list(out["ordered"]) == ["z", "a"]
    assert type(out["default"]) is defaultdict and out["default"].default_factory is list
    assert type(out["tagged"]) is Tagged and out["tagged"].extra == "instance"
    assert type(out["pair"]) is Pair and type(out["pair"].second) is Pair
    assert type(out["tuple"]) is tuple and out["tuple"][1] == ()
    assert type(out["items"]) is Items
    assert type(out["size"]) is torch.Size and out["size"] == torch.Size([2, 3])
    assert type(out["needs"]) is NeedsArgs and out["needs"].required == "r"
    assert out["empty"] == {"d": {}, "l": [], "t": ()} and type(out["empty"]["t"]) is tuple
    assert isinstance(out["deep"][0][0][0][0]["k"][0], torch.Tensor)
    for container in ("ordered", "default", "tagged", "pair", "items", "needs"):
        assert out[container] is not state[container], container


def test_inputs_are_not_mutated() -> None:
    t = torch.arange(4.0)
    state = {"t": t, "l": [t, 1], "b": io.BytesIO(b"abc")}
    snapshot = (list(state), list(state["l"]), t.clone())
    impl.offload_state_dict_to_cpu(state)
    impl.create_cpu_state_dict(state)
    impl.check_state_dict_similarity(state, state)
    impl.flatten_state_dict(state)
    assert (list(state), list(state["l"])) == snapshot[:2] and torch.equal(t, snapshot[2])
    assert state["b"].tell() == 0


@pytest.mark.parametrize("bad", [{1}, complex(1, 2), torch.device("cpu"), object()])
def test_type_check_message_names_path_and_type(bad) -> None:
    name = type(bad).__name__
    with pytest.raises(ValueError) as info:
        impl.offload_state_dict_to_cpu({"a": [1, {"k": bad}]})
    assert str(info.value) == (
        f"unsupported value of type {name} at state_dict['a'][1]['k']; pass type_check=False to deep-copy it"
    )
