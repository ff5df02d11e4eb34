"""Oracle of CONTRACT flatten_state_dict and unflatten_state_dict."""

from __future__ import annotations

from typing import Any

from conformance.case import Case
from conformance.observation import (
    Container,
    Outcome,
    RaisedObs,
    ValueObs,
)
from conformance.oracle.common import (
    rank_inputs,
)
from conformance.vocabulary import (
    ROOT,
    flatten_paths,
    object_path,
)
from strategies.spec import (
    DictSpec,
    Path,
    SeqSpec,
    Spec,
    iter_leaves,
)


def expect_flatten_state_dict(case: Case, rank: int) -> Outcome:
    inputs = rank_inputs(case, case.state_dict, rank, ROOT)
    untouched = {ROOT: inputs.observe_all()}
    leaves = dict(iter_leaves(case.state_dict))
    seen: set[str] = set()
    flat_keys, flat_values, mapping_values = [], [], []
    for fqn, path in flatten_paths(case.state_dict):
        if fqn in seen:
            return Outcome(RaisedObs("ValueError", fqn), untouched)
        seen.add(fqn)
        flat_keys.append(fqn)
        flat_values.append(inputs.unchanged(path, leaves[path]))
        mapping_values.append(_path_obs(object_path(case.state_dict, path)))
    flat = Container("dict", tuple(flat_keys), tuple(flat_values))
    mapping = Container("dict", tuple(flat_keys), tuple(mapping_values))
    return Outcome(Container("tuple", (0, 1), (flat, mapping)), untouched)


def _path_obs(path: tuple) -> Container:
    return Container("tuple", tuple(range(len(path))), tuple(ValueObs(type(k).__name__, k) for k in path))


def expect_unflatten_state_dict(case: Case, rank: int) -> Outcome:
    """Nested plain dicts (str keys) and lists rebuilt from the flattened leaves (cases hold no
    empty containers, which flattening cannot represent)."""
    inputs = rank_inputs(case, case.state_dict, rank, ROOT)

    def rebuilt(spec: Spec, path: Path) -> Any:
        if isinstance(spec, DictSpec):
            keys = tuple(str(k) for k, _ in spec.items)
            return Container("dict", keys, tuple(rebuilt(c, (*path, k)) for k, c in spec.items))
        if isinstance(spec, SeqSpec):
            children = tuple(rebuilt(c, (*path, i)) for i, c in enumerate(spec.items))
            return Container("list", tuple(range(len(children))), children)
        return inputs.unchanged(path, spec)

    return Outcome(rebuilt(case.state_dict, ()), {})
