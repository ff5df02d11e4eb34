"""Unit tests of the harness pieces that need no world: cases, comparison, divergences."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.case import Case, CaseError, load_case
from conformance.compare import Difference, compare_outcomes, tensor_mismatch
from conformance.divergences import (
    Divergence,
    DivergenceFileError,
    Divergences,
    divergence_entry,
    load_divergences,
)
from conformance.observation import ANY, Container, Outcome, RaisedObs, TensorObs, Tolerance, ValueObs
from conformance.utilities import TABLE
from strategies.spec import DictSpec, TensorSpec

ALL_CASES = st.one_of([utility.cases((2, 4)) for utility in TABLE])


@settings(max_examples=60, deadline=None)
@given(case=ALL_CASES)
def test_cases_survive_json_and_blob_round_trips(case):
    assert Case.from_json(case.to_json()) == case
    assert Case.from_blob(case.to_blob()) == case
    assert load_case(case.to_blob()) == case


def test_bad_case_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(CaseError, match="case blob is damaged"):
        Case.from_blob("sdc1:not-base64!!")
    with pytest.raises(CaseError, match="a case blob starts with"):
        Case.from_blob("xyz")
    with pytest.raises(CaseError, match="cannot read case file"):
        load_case(str(tmp_path / "missing.json"))
    with pytest.raises(CaseError, match="not valid JSON"):
        load_case("{oops")
    with pytest.raises(CaseError, match="not a valid case"):
        load_case('{"utility": "x"}')


def test_bitwise_comparison_tells_nan_and_signed_zero():
    nan = torch.tensor([math.nan, 1.0])
    assert tensor_mismatch(nan, nan.clone()) == ""
    assert "data differs" in tensor_mismatch(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert "data differs at [1]" in tensor_mismatch(torch.tensor([1, 2]), torch.tensor([1, 3]))
    assert "dtype" in tensor_mismatch(torch.tensor([1]), torch.tensor([1.0]))
    assert "shape" in tensor_mismatch(torch.zeros(2), torch.zeros(3))
    complex_nan = torch.tensor([complex(math.nan, 1)])
    assert tensor_mismatch(complex_nan, complex_nan.clone()) == ""


def test_tolerance_applies_only_where_the_expected_leaf_allows_it():
    close = (torch.tensor([1.0]), torch.tensor([1.0 + 1e-7]))
    assert tensor_mismatch(*close) != ""
    assert tensor_mismatch(*close, Tolerance(1e-5, 1e-5)) == ""


def _tensor(data, **facts):
    return TensorObs(
        "Tensor", "cpu", str(data.dtype).removeprefix("torch."), tuple(data.shape), data, **facts
    )


def _lines(diffs) -> list[str]:
    return [d.render() for d in diffs]


def test_difference_lines_name_rank_path_and_field():
    expected = Outcome(Container("dict", ("a",), (Container("list", (0,), (_tensor(torch.zeros(2)),)),)))
    observed = Outcome(
        Container(
            "dict", ("a",), (Container("tuple", (0,), (_tensor(torch.zeros(2, dtype=torch.float64)),)),)
        )
    )
    diffs = compare_outcomes(expected, observed, rank=1)
    assert "rank 1, state_dict['a']: container is tuple, expected list" in _lines(diffs)
    assert "rank 1, state_dict['a'][0]: dtype is torch.float64, expected torch.float32" in _lines(diffs)
    dtype = next(d for d in diffs if d.field == "dtype")
    assert (dtype.rank, dtype.root, dtype.path) == (1, "state_dict", ("a", 0))
    assert (dtype.observed, dtype.expected) == ("float64", "float32")


def test_children_of_a_container_whose_keys_differ_are_still_compared():
    expected = Outcome(Container("dict", ("a", "b"), (ValueObs("int", 1), ValueObs("int", 2))))
    observed = Outcome(Container("dict", ("b", "c"), (ValueObs("int", 3), ValueObs("int", 4))))
    diffs = compare_outcomes(expected, observed, 0)
    assert [d.field for d in diffs] == ["keys", "value"]
    assert diffs[1].path == ("b",) and diffs[1].observed == "int 3"


def test_any_leaves_facts_open_and_raised_messages_are_substrings():
    expected = Outcome(_tensor(torch.ones(1), aliases=ANY))
    observed = Outcome(_tensor(torch.ones(1), aliases="state_dict['x']"))
    assert compare_outcomes(expected, observed, 0) == []
    assert (
        compare_outcomes(
            Outcome(RaisedObs("ValueError", "['a']")),
            Outcome(RaisedObs("ValueError", "at state_dict['a']: bad")),
            0,
        )
        == []
    )
    diffs = compare_outcomes(Outcome(RaisedObs("ValueError", "['a']")), Outcome(ValueObs("int", 1)), 0)
    assert _lines(diffs) == ["rank 0, state_dict: returned int 1, expected to raise ValueError(\"['a']\")"]
    assert (diffs[0].field, diffs[0].observed, diffs[0].expected) == ("raised", "nothing", "ValueError")


def _case(utility: str = "gather_state_dict") -> Case:
    return Case(utility, 2, 0, DictSpec((("a", TensorSpec((2,), "float32")), ("b", TensorSpec((), "int64")))))


def _entry(**raw) -> Divergence:
    base = {"id": "e", "utility": "gather_state_dict", "reason": "why", "replay": "sdc1:"}
    return divergence_entry({**base, **raw}, "test")


def test_a_divergence_excuses_only_its_field_and_values():
    entry = _entry(field="container", observed="dict", expected="OrderedDict")
    divergences = Divergences((entry,))
    kinds = Difference(0, "state_dict", (), "container", "dict", "OrderedDict")
    as_list = Difference(0, "state_dict", (), "container", "list", "OrderedDict")
    data = Difference(0, "state_dict", ("a",), "data", "differs", "equal", "data differs")
    left, excused = divergences.excuse(_case(), [kinds, as_list, data])
    assert left == [as_list, data]
    assert excused == [("e", kinds)]
    assert divergences.excuse(_case("offload_state_dict_to_cpu"), [kinds])[0] == [kinds]


def test_a_leaf_scope_is_judged_on_the_differences_own_leaf():
    entry = _entry(field="shared", observed="False", expected="True", scope="zero_dim_tensor")
    zero_dim = Difference(0, "state_dict", ("b",), "shared", False, True)
    other_leaf = Difference(0, "state_dict", ("a",), "shared", False, True)
    assert entry.applies(_case(), zero_dim)
    assert not entry.applies(_case(), other_leaf)  # the case has a 0-d leaf, but this one is not


def test_stops_midway_excuses_only_the_consequences_of_its_raise():
    entry = _entry(
        field="raised",
        observed="ZeroDivisionError: .*",
        expected="nothing",
        scope="zero_dim_tensor",
        stops_midway=True,
    )
    divergences = Divergences((entry,))
    raised = Difference(0, "state_dict", (), "raised", "ZeroDivisionError: x", "nothing")
    half_written = Difference(0, "state_dict", ("a",), "data", "differs", "equal", mutated=True)
    blocked = Difference(1, "state_dict", (), "raised", "Blocked: still blocked", "nothing")
    returned = Difference(1, "state_dict", ("a",), "data", "differs", "equal")
    left, excused = divergences.excuse(_case(), [raised, half_written, blocked, returned])
    assert left == [returned]
    assert {d for _, d in excused} == {raised, half_written, blocked}


def test_the_loader_refuses_entries_that_excuse_a_whole_field(tmp_path):
    path = tmp_path / "loose.toml"
    head = '[[divergence]]\nid = "x"\nutility = "gather_state_dict"\nreason = "r"\nreplay = "sdc1:"\n'
    for loose in (
        'field = "data"\n',
        'field = "data"\nobserved = ".*"\n',
        'field = "raised"\nobserved = "(?s).*"\nexpected = "x|.*"\n',
    ):
        path.write_text(head + loose)
        with pytest.raises(DivergenceFileError, match="would excuse every"):
            load_divergences(str(path))
    path.write_text(head + 'field = "data"\nscope = "zero_dim_tensor"\n')
    assert load_divergences(str(path)).entries[0].scopes == ("zero_dim_tensor",)


def test_divergence_files_are_validated(tmp_path):
    assert load_divergences("none").entries == ()
    with pytest.raises(DivergenceFileError, match="cannot read known-divergence file"):
        load_divergences(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    head = '[[divergence]]\nid = "x"\nreason = "r"\nreplay = "sdc1:"\n'
    cases = [
        (head + 'utility = "gather_state_dict"\nfield = "data"\nobserved = "("\n', "bad observed pattern"),
        ('[[divergence]]\nid = "x"\n', "lacks the key"),
        (head + 'utility = "u"\nfield = "data"\nobserved = "x"\n', "unknown utility 'u'"),
        (head + 'utility = "gather_state_dict"\nfield = "colour"\nobserved = "x"\n', "unknown field"),
        (head + 'utility = "gather_state_dict"\nfield = "data"\nscope = "nope"\n', "unknown scope 'nope'"),
        (
            head + 'utility = "gather_state_dict"\nfield = "data"\nobserved = "x"\nmacth = "y"\n',
            "unknown key 'macth'",
        ),
        ('[[divergenc]]\nid = "x"\n', "unknown table or key 'divergenc'"),
        ('absent = ["gather"]\n', "absent names unknown utility 'gather'"),
        (
            head + 'utility = "gather_state_dict"\nfield = "data"\nobserved = "x"\ntorch = "2.13"\n',
            "version range",
        ),
    ]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(DivergenceFileError, match=message):
            load_divergences(str(bad))


def test_entries_outside_the_installed_torch_are_inactive(tmp_path):
    from packaging.version import Version

    path = tmp_path / "v.toml"
    path.write_text(
        '[[divergence]]\nid = "old"\nutility = "gather_state_dict"\nreason = "r"\nreplay = "sdc1:"\n'
        'field = "data"\nobserved = "x"\ntorch = ">=2.13,<2.14"\n'
    )
    assert [e.id for e in load_divergences(str(path), Version("2.13.0")).entries] == ["old"]
    later = load_divergences(str(path), Version("2.14.1"))
    assert later.entries == () and [e.id for e in later.inactive] == ["old"]


def test_ranks_that_never_answered_a_crashed_job_are_reported_not_a_harness_keyerror() -> None:
    """A rank killed with the world after another rank died has neither a result nor a failure
    of its own: its outcome says it gave no answer, and the ranks that answered keep theirs."""
    from conformance.check import observe_case
    from conformance.world import JobFailed, RankFailure

    answered = Outcome(ValueObs("NoneType", None))

    class CrashedWorld:
        size = 3

        def submit(self, *args):
            return self

        def result(self):
            raise JobFailed("crash", {1: RankFailure("RankDied", "killed by SIGABRT")}, results={2: answered})

    case = Case("flatten_state_dict", 3, 0, DictSpec((("w", TensorSpec((2,), "float32")),)))
    outcomes = observe_case(CrashedWorld(), case, "impl")
    assert [o.result.type_name for o in outcomes[:2]] == ["RankDied", "RankDied"]
    assert "no answer" in outcomes[0].result.message and "killed by SIGABRT" in outcomes[1].result.message
    assert outcomes[2] is answered


def test_target_traceback_keeps_only_the_targets_frames(tmp_path, monkeypatch):
    import importlib

    from conformance.faults import target_traceback

    (tmp_path / "sdc_tb_fork.py").write_text(
        "def call(g):\n    return g()\n\n\ndef boom():\n    raise ValueError('x')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fork = importlib.import_module("sdc_tb_fork")
    with pytest.raises(ValueError) as raised:
        fork.call(lambda: fork.boom())  # a frame of this file between two of the target's
    text = target_traceback(raised.value, fork.__file__)
    assert f'File "{fork.__file__}", line 2, in call' in text
    assert f'File "{fork.__file__}", line 6, in boom' in text
    assert __file__ not in text and text.endswith("ValueError: x")


def test_failure_text_and_replay_lines_show_every_raising_ranks_traceback():
    from conformance.check import judge

    case = Case("flatten_state_dict", 2, 1, DictSpec((("a", TensorSpec((2,), "float32")),)))
    where = ['  File "/forks/mine.py", line 7, in _flatten_state_dict', "    raise ValueError('boom')"]
    raised = [
        RaisedObs("ValueError", f"boom {rank}", "\n".join([*where, f"ValueError: boom {rank}"]))
        for rank in (0, 1)
    ]
    assert raised[0] == RaisedObs("ValueError", "boom 0")  # the traceback takes no part in comparisons
    report = judge(case, "mine", [Outcome(r) for r in raised])
    for text in (report.failure_message(), "\n".join(report.rank_lines())):
        for rank in (0, 1):
            assert f"raised ValueError: boom {rank}" in text
            assert f"  ValueError: boom {rank}" in text
        assert text.count(where[0].strip()) == 2, text


@pytest.mark.parametrize(
    ("seed", "profile", "shown"),
    [(1234, "dev", "1234"), (None, "ci", "derandomized"), (None, "dev", "random")],
)
def test_report_header_names_the_seed(seed, profile, shown) -> None:
    from types import SimpleNamespace

    from conformance.harness import HarnessConfig
    from conformance.plugin import _CONFIG, pytest_report_header

    config = SimpleNamespace(
        stash={_CONFIG: HarnessConfig(target="impl", profile=profile)},
        getoption=lambda name, default=None: seed if name == "hypothesis_seed" else default,
    )
    assert pytest_report_header(config)[-1].startswith(f"  seed: {shown}")


def gc_frozen_count() -> int:
    import gc

    return gc.get_freeze_count()


def test_a_worlds_start_up_is_left_out_of_garbage_collection(world_factory):
    """The world's warm-up freezes what the rank's start-up built (torch, the target, a mesh),
    so that later collections skip it; a case's short-lived objects are still collected."""
    from conformance.harness import warm_up

    world = world_factory(2)
    world.run(warm_up, "impl")
    assert all(count > 10_000 for count in world.run(gc_frozen_count))
