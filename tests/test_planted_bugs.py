"""Known divergences excuse only what they document: a planted bug next to each must be caught.

Each :class:`PlantedBug` patches a copy of the installed torch's ``_state_dict_utils.py`` (a
text replacement that must apply exactly once) with a bug at the place a known divergence of
``torch.toml`` is about: the same utility, the same kind of leaf, often the same cases. The
fork is judged with torch's own known-divergence file. The test requires:

- some drawn case of the utility shows an *unexcused* difference matching the bug's symptom
  (``shows``), and the same case conforms on torch itself (so the difference is the bug's);
- the entry's replay case still shows the entry's own symptom, excused, on the fork.

All forks share one world per size (a fork is just another module on ``sys.path``, which
spawned ranks inherit).
"""

from __future__ import annotations

import re

import pytest

from conformance.divergences import load_divergences
from strategies.spec import TensorSpec
from tests.planted import PlantedBug, assert_caught, fork_worlds, write_fork

PLANTED: tuple[PlantedBug, ...] = (
    PlantedBug(
        "offload-reverses-keys",
        ("ordereddict-becomes-dict",),
        "offload_state_dict_to_cpu",
        "            for key, value in iter_object.items()\n",
        "            for key, value in reversed(list(iter_object.items()))\n",
        r"keys are \[",
    ),
    PlantedBug(
        "gather-tuple-becomes-list",
        ("namedtuple-becomes-tuple",),
        "gather_state_dict",
        "        if isinstance(iter_object, tuple):\n            ret = tuple(ret)\n",
        "        if False:\n            ret = tuple(ret)\n",
        r"container is list, expected (tuple|namedtuple:\w+)",
        replay_checked=False,  # the bug turns the entry's tuple into a list
    ),
    PlantedBug(
        "type-check-other-message",
        ("type-check-message-without-path",),
        "gather_state_dict",
        'raise ValueError(f"Unexpected value type {type(iter_object)}")',
        'raise ValueError("unsupported value")',
        r"raised ValueError: 'unsupported value', expected a message containing",
        kwargs=(("type_check", True),),
        unsupported=True,
        replay_checked=False,  # the fork changed the very message the entry is about
    ),
    PlantedBug(
        "copy-mismatch-raises-keyerror",
        ("copy-mismatch-not-validated",),
        "copy_state_dict",
        "            raise CompanionMismatch(msg)\n",
        "            raise KeyError(msg)\n",
        r"raised KeyError",
    ),
    PlantedBug(
        "copy-skips-dtensor-destinations",
        ("copy-writes-before-failing",),
        "copy_state_dict",
        "                    companion_obj._local_tensor.copy_(\n",
        "                    companion_obj._local_tensor.clone().copy_(\n",
        r"copy_state_dict\[.*data differs",
    ),
    PlantedBug(
        "copy-returns-source-tensors",
        ("copy-dtype-cast-silently",),
        "copy_state_dict",
        "                ret = companion_obj\n",
        "                ret = ret if isinstance(ret, torch.Tensor) and not isinstance(ret, DTensor) else companion_obj\n",
        r"aliases input is \"?'?state_dict",
    ),
    PlantedBug(
        "sharded-gather-flips",
        (
            "sharded-empty-divides-by-zero",
            "sharded-not-dim0-wrong-data",
            "sharded-not-dim0-gloo-size-error",
        ),
        "all_gather_sharded_tensor",
        "    tensor = tensor.narrow(0, 0, tensor_numel).reshape(sharded_tensor.size())\n",
        "    tensor = tensor.narrow(0, 0, tensor_numel).flip(0).reshape(sharded_tensor.size())\n",
        r"data differs",
    ),
    PlantedBug(
        "distribute-loads-zeros",
        ("loaded-tensor-aliases-full",),
        "distribute_state_dict",
        "            else:\n                local_state_dict[key] = value.detach().to(device)\n",
        "            else:\n                local_state_dict[key] = torch.zeros_like(value).to(device)\n",
        r"local_state_dict\[.*data differs",
        examples=500,  # an int32 full tensor into a plain-tensor local entry (one local kind in five)
    ),
    PlantedBug(
        "broadcast-cpu-offload-zeroes",
        ("broadcast-cpu-offload-missing-key",),
        "broadcast_state_dict",
        "            if cpu_offload:\n                for key in keys:\n"
        "                    local_state_dict[key] = local_state_dict[key].cpu()\n",
        "            if cpu_offload:\n                for key in keys:\n"
        "                    local_state_dict[key] = torch.zeros_like(local_state_dict[key].cpu())\n",
        r"local_state_dict\[.*(data differs|class is)",
        kwargs=(("cpu_offload", True),),
    ),
    PlantedBug(
        "broadcast-drops-values",
        (
            "broadcast-global-rank0-source",
            "broadcast-tensors-global-rank0-source",
            "broadcast-dtensor-in-full-unsupported",
            "load-dtensor-shape-mismatch-undetected",
            "load-dtensor-shape-mismatch-copy-fails",
        ),
        "broadcast_state_dict",
        "            if key in local_state_dict:\n                local_state_dict[key] = value\n            continue\n",
        "            continue\n",
        r"local_state_dict\[.*value is",
    ),
    PlantedBug(
        "distribute-deletes-local-only-keys",
        ("distribute-adds-absent-keys",),
        "distribute_state_dict",
        "            else:\n                local_state_dict[key] = value.detach().to(device)\n",
        "            else:\n                local_state_dict[key] = value.detach().to(device)\n"
        "    for key in [k for k in local_state_dict if k not in full_state_dict]:\n"
        "        del local_state_dict[key]\n",
        r"keys are \[",
    ),
    PlantedBug(
        "distribute-tensors-flips-partial-and-strided",
        (
            "partial-pieces-n-times",
            "partial-empty-bool-becomes-float",
            "strided-shard-pieces-wrong",
            "distribute-tensors-shape-mismatch-undetected",
            "distribute-tensors-shape-mismatch-loaded",
        ),
        "distribute_tensors",
        "            ret.to_local().copy_(full_tensor[tuple(slices)])\n",
        "            piece = full_tensor[tuple(slices)]\n"
        "            if piece.dim() and any(type(p).__name__ in ('Partial', '_StridedShard') for p in ret.placements):\n"
        "                piece = piece.flip(0)\n"
        "            ret.to_local().copy_(piece)\n",
        r"data differs",
    ),
    PlantedBug(
        "gather-sharded-flips",
        ("gather-replicated-dtensor-aliases-local",),
        "gather_state_dict",
        (
            "        placements = [Replicate() for _ in value.placements]\n",
            "        value = value.to_local()\n        if isinstance(value, AsyncCollectiveTensor):\n",
        ),
        (
            "        placements = [Replicate() for _ in value.placements]\n"
            "        sharded = any(type(p).__name__ != 'Replicate' for p in value.placements)\n",
            "        value = value.to_local()\n        value = value.flip(0) if value.dim() and sharded else value\n"
            "        if isinstance(value, AsyncCollectiveTensor):\n",
        ),
        r"data differs",
    ),
    PlantedBug(
        "broadcast-zero-dim-zeroed",
        (
            "zero-dim-loaded-as-object",
            "wide-unsigned-zero-dim-unpicklable",
            "zero-dim-dtensor-entry-replaced",
        ),
        "broadcast_state_dict",
        "            elif value.dim() == 0:\n                ret[key] = value.cpu()\n",
        "            elif value.dim() == 0:\n                ret[key] = torch.zeros_like(value.cpu())\n",
        r"data differs|value is",
    ),
    PlantedBug(
        "broadcast-full-flipped",
        ("broadcast-non-contiguous-full-garbled", "broadcast-non-contiguous-overlap-refused"),
        "broadcast_state_dict",
        "            full_tensor = full_state.detach().to(pg_device)\n",
        "            full_tensor = full_state.detach().to(pg_device)\n"
        "            full_tensor = full_tensor.flip(0).contiguous() if full_tensor.dim() else full_tensor\n",
        r"data differs",
        examples=250,
        keep=lambda case: _loads_a_plain_entry_from_rows(case),  # where a flip can show
    ),
    PlantedBug(
        "similarity-ignores-dtype",
        (
            "similarity-overwrites-compared",
            "similarity-copy-fails-on-local-shapes",
            "similarity-misjudges-structure",
            "similarity-raises-on-structure",
            "similarity-copy-mixes-tensor-and-dtensor",
        ),
        "check_state_dict_similarity",
        "        if companion_obj.dtype != obj.dtype or companion_obj.size() != obj.size():\n",
        "        if companion_obj.size() != obj.size():\n",
        r"state_dict: value is bool True, expected bool False",
    ),
    PlantedBug(
        "similarity-always-true",
        ("similarity-misjudges-structure",),
        "check_state_dict_similarity",
        "    try:\n        _iterate_state_dict(\n            state_dict,\n            _identity_func,\n            _identity_func,\n            tensor_func,\n",
        "    return True\n    try:\n        _iterate_state_dict(\n            state_dict,\n            _identity_func,\n            _identity_func,\n            tensor_func,\n",
        r"state_dict: value is bool True, expected bool False",
        replay_checked=False,  # nothing is overwritten any more
    ),
    PlantedBug(
        "create-cpu-not-shared",
        ("create-cpu-zero-dim-not-shared",),
        "create_cpu_state_dict",
        "            t = torch.empty(*tuple(obj.size()), dtype=obj.dtype)\n            t = t.share_memory_()\n",
        "            t = torch.empty(*tuple(obj.size()), dtype=obj.dtype)\n",
        r"shared is False, expected True",
        kwargs=(("share_memory", True), ("pin_memory", False)),
    ),
    PlantedBug(
        "create-cpu-pin-memory-returns-empty",
        ("create-cpu-pin-memory-without-accelerator",),
        "create_cpu_state_dict",
        "    ret = _iterate_state_dict(\n        state_dict,\n        sharded_tensor_func,\n",
        "    if pin_memory and not torch.cuda.is_available():\n        return {}\n"
        "    ret = _iterate_state_dict(\n        state_dict,\n        sharded_tensor_func,\n",
        r"keys are \[",
        kwargs=(("pin_memory", True),),
        replay_checked=False,  # the fork returns {} where torch raised or returned a copy
    ),
    PlantedBug(
        "create-cpu-returns-1d-dtensor",
        ("create-cpu-returns-input-object",),
        "create_cpu_state_dict",
        "        if len(obj.size()) == 0:\n            return obj\n\n        if obj.device",
        "        if len(obj.size()) <= 1:\n            return obj\n\n        if obj.device",
        r"aliases input is",
    ),
    PlantedBug(
        "gather-integers-become-float64",
        ("gloo-dtype-gather-raises",),
        "gather_state_dict",
        "        value = value.to_local()\n        if isinstance(value, AsyncCollectiveTensor):\n",
        "        value = value.to_local()\n"
        "        value = value.double() if not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool) else value\n"
        "        if isinstance(value, AsyncCollectiveTensor):\n",
        r"dtype is torch\.float64, expected torch\.u?int\d+",
        examples=250,  # an integer DTensor in a case torch gathers without raising
    ),
    PlantedBug(
        "distribute-integers-become-float64",
        (
            "gloo-dtype-broadcast-raises",
            "distribute-partial-sum-divided",
            "distribute-partial-op-unsupported",
            "distribute-replaces-dtensor",
            "distribute-replicated-dtensor-aliases-full",
            "distribute-uneven-strided-shard-asserts",
            "distribute-dtensor-in-full-undetected",
            "distribute-dtensor-in-full-redistribute-refused",
        ),
        "distribute_state_dict",
        "            else:\n                local_state_dict[key] = value.detach().to(device)\n",
        "            else:\n                local_state_dict[key] = value.detach().to(device)\n"
        "                if not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):\n"
        "                    local_state_dict[key] = local_state_dict[key].double()\n",
        r"dtype is torch\.float64, expected torch\.u?int\d+",
        examples=250,  # an integer full tensor into a plain-tensor local entry (one local kind in five)
    ),
    PlantedBug(
        "create-cpu-dtensor-flattened",
        (
            "create-cpu-partial-deepcopy-is-collective",
            "create-cpu-pin-memory-error-message",
            "create-cpu-pin-memory-shared-asserts",
        ),
        "create_cpu_state_dict",
        "        ret._local_tensor = tensor_func(ret._local_tensor, pg, device, None)\n",
        "        ret._local_tensor = tensor_func(ret._local_tensor.reshape(-1), pg, device, None)\n",
        r"(local_shape|stride) is",
    ),
)

_BY_NAME = {bug.name: bug for bug in PLANTED}


def _loads_a_plain_entry_from_rows(case) -> bool:
    """A load case without error paths whose full tensor of 2+ rows goes into a plain local entry."""
    from conformance.oracle.load import load_check_failures

    if load_check_failures(case, case.utility):
        return False
    local = dict(case.other.items)
    return any(
        isinstance(v, TensorSpec) and v.shape and v.shape[0] > 1 and isinstance(local.get(k), TensorSpec)
        for k, v in case.state_dict.items
    )


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    yield from fork_worlds(PLANTED, tmp_path_factory.mktemp("planted"))


TORCH = load_divergences("torch")


@pytest.mark.parametrize("name", list(_BY_NAME))
def test_planted_bug_is_caught_next_to_its_known_divergences(name, worlds):
    assert_caught(_BY_NAME[name], worlds, TORCH)


def test_every_entry_has_a_planted_bug_test():
    covered = {entry_id for bug in PLANTED for entry_id in bug.entries}
    missing = sorted({e.id for e in [*TORCH.entries, *TORCH.inactive]} - covered)
    assert not missing, f"entries without a planted-bug test: {', '.join(missing)}"


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["similarity-always-true", "distribute-deletes-local-only-keys"])
def test_run_against_a_planted_fork_exits_1_and_shows_the_bug(name, tmp_path):
    """What a fork maintainer runs: ``run --target <fork> --expected torch`` exits 1 and prints
    the new bug's difference (the issue's own examples of bugs that used to pass)."""
    from tests.cli_helpers import cli

    bug = _BY_NAME[name]
    fork = write_fork(tmp_path, bug)
    result = cli(
        "run", "--target", fork, "--expected", "torch", "--profile", "ci", "--only", bug.utility,
        "--world-sizes", "2", "--max-examples", "15", path=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(bug.shows, result.stdout), result.stdout[-3000:]
    assert f"target {fork} = {fork} ({tmp_path}" in result.stdout  # the header names the file
    assert "known divergences: " in result.stdout and "torch.toml" in result.stdout


def test_a_missing_utility_fails_unless_declared_absent(tmp_path):
    from tests.cli_helpers import cli

    bug = PlantedBug(
        "no-distribute-tensors", (), "distribute_tensors", "def _distribute_tensors(", "def _gone(", ""
    )
    fork = write_fork(tmp_path, bug)
    args = ("run", "--target", fork, "--only", "distribute_tensors", "--max-examples", "3")
    result = cli(*args, "--expected", "torch", path=str(tmp_path))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "missing utility: target" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("distribute_tensors "))
    # every property of the utility and every known divergence attributed to it (its first
    # utility, as the report does) is reported missing
    entries = [e for e in load_divergences("torch").entries if e.utilities[0] == "distribute_tensors"]
    assert row.split()[1:4] == ["0", "0", str(2 + len(entries))], row  # passed, failed, missing

    from conformance.divergences import SHIPPED

    declared = tmp_path / "fork.toml"
    declared.write_text('absent = ["distribute_tensors"]\n' + (SHIPPED / "torch.toml").read_text())
    result = cli(*args, "--expected", str(declared), path=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("distribute_tensors "))
    assert row.split()[1:4] == ["0", "0", "0"] and row.split()[6] == str(2 + len(entries)), row  # all skipped
