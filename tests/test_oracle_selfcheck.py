"""Self-checks of the oracle: it must agree with what ranks really build, and with torch's
own DTensor machinery, before it may judge any target."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.calls import CallContext
from conformance.case import Case
from conformance.case_strategies import altered, nested_state_dicts, without_views
from conformance.compare import compare_outcomes
from conformance.observation import Observer, Outcome
from conformance.oracle.inputs import RankInputs
from conformance.vocabulary import pair_mismatch
from conformance.world import context
from strategies.spec import DTensorSpec, iter_leaves
from strategies.tensors import GLOO_DTYPES


def observe_inputs(case: Case) -> Outcome:
    """Rank job: materialise the state dict and observe it untouched."""
    c = CallContext(case)
    built = c.build(case.state_dict, "state_dict")
    return Outcome(Observer(c.storages).observe(built.value))


def full_tensors(case: Case) -> list:
    """Rank job: torch's own full_tensor() of every DTensor leaf, on CPU."""
    c = CallContext(case)
    sd = c.build(case.state_dict, "state_dict").value
    out = []
    for path, leaf in iter_leaves(case.state_dict):
        if isinstance(leaf, DTensorSpec):
            value = sd
            for key in path:
                value = value[key]
            out.append((path, value.full_tensor().cpu()))
    return out


@settings(max_examples=25, deadline=None)
@given(spec=st.integers(0, 2**31 - 1).flatmap(lambda seed: nested_state_dicts(2).map(lambda sd: (seed, sd))))
def test_oracle_inputs_match_what_ranks_build(world_factory, spec):
    seed, sd = spec
    case = Case("gather_state_dict", 2, seed, sd)
    observed = world_factory(2).run(observe_inputs, case)
    for rank in range(2):
        expected = Outcome(RankInputs(sd, seed, rank, 2, "state_dict").observe_all())
        assert compare_outcomes(expected, observed[rank], rank) == []


@settings(max_examples=25, deadline=None)
@given(spec=nested_state_dicts(2, dtypes=GLOO_DTYPES))  # torch's full_tensor needs gloo dtypes
def test_oracle_global_values_match_torch_full_tensor(world_factory, spec):
    case = Case("gather_state_dict", 2, 7, spec)
    results = world_factory(2).run(full_tensors, case)
    inputs = RankInputs(spec, 7, 0, 2, "state_dict")
    leaves = dict(iter_leaves(spec))
    for per_rank in results:
        for path, full in per_rank:
            expected = inputs.global_value(leaves[path], path)
            if any(p.kind == "partial" for p in leaves[path].placements) and expected.is_floating_point():
                assert full.shape == expected.shape
                assert (full.isnan() == expected.isnan()).all()
            else:
                assert (
                    full.shape == expected.shape
                    and (full.eq(expected) | (full.isnan() & expected.isnan())).all()
                ), path


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_pair_rule_accepts_twins_and_rejects_alterations(data):
    sd = data.draw(nested_state_dicts(2))
    twin = without_views(sd)
    assert pair_mismatch(sd, twin, 0, 2, local=True) is None
    changed = data.draw(altered(twin))
    if changed != twin:
        verdicts = [pair_mismatch(sd, changed, rank, 2, local=True) for rank in range(2)]
        # an alteration may keep every rank's local view (e.g. Shard(0) vs Shard(0) again)
        assert any(v is not None for v in verdicts) or _only_placements_changed(twin, changed)


def _only_placements_changed(a, b) -> bool:
    la, lb = dict(iter_leaves(a)), dict(iter_leaves(b))
    if la.keys() != lb.keys():
        return False
    return all(
        x == y or (isinstance(x, DTensorSpec) and isinstance(y, DTensorSpec) and x.tensor == y.tensor)
        for x, y in ((la[k], lb[k]) for k in la)
    )


def test_context_is_only_available_in_jobs():
    import pytest

    with pytest.raises(RuntimeError, match="only available inside a world job"):
        context()
