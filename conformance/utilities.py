"""The utility table: everything the harness knows about each utility under test, in one record.

A :class:`Utility` names the CONTRACT.md section, the arguments (positional parameters and the
roots they are observed under), whether every rank must call it together, the keyword
defaults the contract states, the strategy that draws its cases, the oracle that says what
each rank must observe, the rank-side call that builds its live arguments, and the shape of
its fixed 2x2-mesh example. Nothing else in the harness lists utilities: adding one is a
record here, its oracle and its case strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from hypothesis import strategies as st

from conformance import calls
from conformance import case_strategies as cases
from conformance.case import Case
from conformance.observation import Outcome
from conformance.oracle import copy, flatten, gather, load, sharded
from conformance.vocabulary import COMPARED_ROOT, COPY_ROOT, FLAT_ROOT, FULL_ROOT, LOCAL_ROOT, ROOT


@dataclass(frozen=True)
class Utility:
    """One utility of ``torch.distributed._state_dict_utils`` (torch's name: ``_<name>``)."""

    name: str
    params: tuple[str, ...]  # the positional parameters it is called with (CONTRACT's names)
    roots: tuple[str, ...]  # the arguments observed after the call, by root
    collective: bool  # every rank (of its pg) calls it together (CONTRACT *Collective*)
    defaults: tuple[tuple[str, Any], ...]  # keyword defaults, as CONTRACT's signature states them
    cases: Callable[[Sequence[int]], st.SearchStrategy[Case]]  # draws its cases on these world sizes
    oracle: Callable[[Case, int], Outcome]  # a rank's expected outcome (single process)
    rank_call: Callable[[calls.CallContext], calls.Call]  # a rank's live arguments
    example: str  # the arguments of its 2x2-mesh example (conformance.mesh_examples)
    result_root: str = ROOT  # the root differences in the result are reported under
    loads: bool = False  # loads a full state dict into local entries (CONTRACT *DTensor pieces*)

    @property
    def torch_name(self) -> str:
        return f"_{self.name}"

    @property
    def contract_heading(self) -> str:
        """The start of its section heading in CONTRACT.md (``### name(``)."""
        return f"### {self.name}("


TABLE: tuple[Utility, ...] = (
    Utility(
        "gather_state_dict",
        params=(ROOT,),
        roots=(ROOT,),
        collective=True,
        defaults=(
            ("pg", None),
            ("device", None),
            ("cpu_offload", False),
            ("ranks_only", ()),
            ("type_check", True),
        ),
        cases=cases.gather_cases,
        oracle=gather.expect_gather_state_dict,
        rank_call=calls.call_gather,
        example="tree",
    ),
    Utility(
        "offload_state_dict_to_cpu",
        params=(ROOT,),
        roots=(ROOT,),
        collective=False,
        defaults=(("ranks_only", ()), ("type_check", True)),
        cases=cases.offload_cases,
        oracle=gather.expect_offload_state_dict_to_cpu,
        rank_call=calls.call_one_tree,
        example="tree",
    ),
    Utility(
        "copy_state_dict",
        params=(ROOT, COPY_ROOT),
        roots=(ROOT, COPY_ROOT),
        collective=False,
        defaults=(("non_blocking", False), ("type_check", True)),
        cases=cases.copy_cases,
        oracle=copy.expect_copy_state_dict,
        rank_call=calls.call_copy,
        example="two_trees",
    ),
    Utility(
        "create_cpu_state_dict",
        params=(ROOT,),
        roots=(ROOT,),
        collective=False,
        defaults=(("pin_memory", False), ("share_memory", False)),
        cases=cases.create_cpu_cases,
        oracle=copy.expect_create_cpu_state_dict,
        rank_call=calls.call_one_tree,
        example="tree",
    ),
    Utility(
        "check_state_dict_similarity",
        params=(ROOT, COMPARED_ROOT),
        roots=(ROOT, COMPARED_ROOT),
        collective=False,
        defaults=(),
        cases=cases.similarity_cases,
        oracle=copy.expect_check_state_dict_similarity,
        rank_call=calls.call_similarity,
        example="two_trees",
    ),
    Utility(
        "distribute_tensors",
        params=(LOCAL_ROOT, "keys", "device", "pg"),
        roots=(LOCAL_ROOT,),
        collective=True,
        defaults=(("pg", None),),
        cases=cases.distribute_tensors_cases,
        oracle=load.expect_distribute_tensors,
        rank_call=calls.call_distribute_tensors,
        example="local_keys",
    ),
    Utility(
        "broadcast_tensors",
        params=(FULL_ROOT, LOCAL_ROOT, "keys", "device", "pg"),
        roots=(FULL_ROOT, LOCAL_ROOT),
        collective=True,
        defaults=(("pg", None),),
        cases=cases.broadcast_tensors_cases,
        oracle=load.expect_broadcast_tensors,
        rank_call=calls.call_broadcast_tensors,
        example="full_local_keys",
        result_root=FULL_ROOT,
        loads=True,
    ),
    Utility(
        "broadcast_state_dict",
        params=(FULL_ROOT, LOCAL_ROOT),
        roots=(FULL_ROOT, LOCAL_ROOT),
        collective=True,
        defaults=(("pg", None), ("strict", False), ("cpu_offload", False)),
        cases=cases.broadcast_cases,
        oracle=load.expect_broadcast_state_dict,
        rank_call=calls.call_broadcast_state_dict,
        example="full_local",
        result_root=FULL_ROOT,
        loads=True,
    ),
    Utility(
        "distribute_state_dict",
        params=(FULL_ROOT, LOCAL_ROOT),
        roots=(FULL_ROOT, LOCAL_ROOT),
        collective=True,
        defaults=(("pg", None),),
        cases=partial(cases.broadcast_cases, utility="distribute_state_dict"),
        oracle=load.expect_distribute_state_dict,
        rank_call=calls.call_distribute_state_dict,
        example="full_local",
        result_root=FULL_ROOT,
        loads=True,
    ),
    Utility(
        "flatten_state_dict",
        params=(ROOT,),
        roots=(ROOT,),
        collective=False,
        defaults=(),
        cases=cases.flatten_cases,
        oracle=flatten.expect_flatten_state_dict,
        rank_call=calls.call_flatten,
        example="tree",
    ),
    Utility(
        "unflatten_state_dict",
        params=(ROOT, "mapping"),
        roots=(FLAT_ROOT,),
        collective=False,
        defaults=(),
        cases=cases.unflatten_cases,
        oracle=flatten.expect_unflatten_state_dict,
        rank_call=calls.call_unflatten,
        example="tree",
    ),
    Utility(
        "all_gather_sharded_tensor",
        params=("sharded_tensor",),
        roots=(ROOT,),
        collective=True,
        defaults=(("pg", None), ("device", None)),
        cases=cases.all_gather_sharded_cases,
        oracle=sharded.expect_all_gather_sharded_tensor,
        rank_call=calls.call_all_gather_sharded,
        example="sharded",
    ),
)

UTILITY: dict[str, Utility] = {u.name: u for u in TABLE}
UTILITY_NAMES: tuple[str, ...] = tuple(UTILITY)


def result_root(case: Case) -> str:
    """The root differences in ``case``'s result are reported under (a law's: ``state_dict``)."""
    utility = UTILITY.get(case.utility)
    return utility.result_root if utility else ROOT


def expected_outcomes(case: Case, utility: str | None = None) -> list[Outcome]:
    """Every rank's expected outcome of ``case`` (as a call of ``utility``, default the case's),
    by the utility's oracle."""
    oracle = UTILITY[utility or case.utility].oracle
    return [oracle(case.on_rank(rank), rank) for rank in range(case.world_size)]


def case_strategy(name: str, world_sizes: Sequence[int], backend: str = "gloo") -> st.SearchStrategy[Case]:
    """The cases of a utility or a law (``law:<name>``) on ``world_sizes``, for ``backend``:
    an NCCL case's ranks hold their tensors on their GPU, and the oracle expects them there.
    Gloo cases are the strategy's own draws, with nothing mapped over them (a derandomized run
    draws the same cases as before)."""
    strategy = (
        cases.LAW_CASES[name](world_sizes) if name in cases.LAW_CASES else UTILITY[name].cases(world_sizes)
    )
    if backend == "gloo":
        return strategy
    return strategy.map(partial(_on_backend, backend=backend))


def _on_backend(case: Case, backend: str) -> Case:
    return replace(case, backend=backend)
