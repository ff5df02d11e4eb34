"""The shape of the code: no import cycles among our packages (imports inside functions
included), and a utility table that is complete and the only list of utilities."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import impl
from conformance import mesh_examples
from conformance.script import script_supports
from conformance.utilities import TABLE, UTILITY_NAMES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("conformance", "strategies", "impl")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "suite" not in path.parts
    }


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import that can run, at any depth (``if TYPE_CHECKING:`` blocks excluded):
    statements, and ``__import__("m")`` / ``importlib.import_module("m")`` calls of a constant
    module name (as an ``import m`` statement)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("__import__", "importlib.import_module", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append(ast.Import(names=[ast.alias(name=str(node.args[0].value))]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from package import module`` included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (imports inside functions included): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import() -> None:
    graph = import_graph()
    graph["conformance.vocabulary"].add("conformance.utilities")  # as an import inside a function would
    assert any("conformance.vocabulary" in cycle for cycle in import_cycles(graph))
    tree = ast.parse("def f():\n    from conformance import utilities\n    __import__('conformance.fuzz')\n")
    found = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in _runtime_imports(tree)]
    assert found == ["conformance", "conformance.fuzz"]


CONTRACT = (ROOT / "CONTRACT.md").read_text()


def _signature_parts(heading: str) -> list[str]:
    """The comma-separated parameters of a CONTRACT.md section's signature line."""
    start = heading.index("(") + 1
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(heading[end], 0)
        end += 1
    return re.split(r",\s*(?![^()]*\))", heading[start : end - 1])


def _contract_defaults(heading: str) -> dict[str, object]:
    """Keyword defaults of a CONTRACT.md section's signature line."""
    defaults = {}
    for part in _signature_parts(heading):
        name, eq, value = part.partition("=")
        if eq:
            defaults[name.strip()] = ast.literal_eval(value.strip())
    return defaults


def _contract_parameters(heading: str) -> list[str]:
    """Parameter names of a CONTRACT.md section's signature line, in order (``*`` dropped)."""
    names = [part.partition("=")[0].strip() for part in _signature_parts(heading)]
    return [n for n in names if n != "*"]


@pytest.mark.parametrize("utility", TABLE, ids=lambda u: u.name)
def test_every_utility_of_the_table_is_complete(utility) -> None:
    """A strategy, an oracle, a rank call, a script call, a 2x2 example, and a CONTRACT section
    whose signature starts with the record's parameters and states its defaults; impl's
    function has the same parameters and defaults."""
    assert callable(utility.cases) and callable(utility.oracle) and callable(utility.rank_call)
    assert script_supports(utility.name) and utility.params
    assert mesh_examples.examples(utility.name), "no 2x2 mesh example"
    headings = [line for line in CONTRACT.splitlines() if line.startswith(utility.contract_heading)]
    assert len(headings) == 1, f"CONTRACT.md has no single section {utility.contract_heading}"
    assert _contract_defaults(headings[0]) == dict(utility.defaults)
    assert tuple(_contract_parameters(headings[0])[: len(utility.params)]) == utility.params
    parameters = inspect.signature(getattr(impl, utility.torch_name)).parameters
    declared = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert declared == dict(utility.defaults)
    assert tuple(parameters)[: len(utility.params)] == utility.params


#: Collections of utility names that are not tables of utilities: which utilities a law combines.
NOT_TABLES = {("conformance.laws", "LAWS")}


def utility_tables(source: str, module: str) -> list[str]:
    """Where ``source`` lists utilities: a dict keyed by two or more utility names, or a tuple,
    list or set literal of three or more (outside :data:`NOT_TABLES`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {ast.unparse(t) for t in targets}
            if any((module, name) in NOT_TABLES for name in names):
                continue
        if isinstance(node, ast.Dict):
            items, least = node.keys, 2
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items, least = node.elts, 3
        else:
            continue
        named = [k.value for k in items if isinstance(k, ast.Constant) and k.value in UTILITY_NAMES]
        if len(named) >= least and not _inside_not_table(source, node, module):
            found.append(f"{module}:{node.lineno}: {', '.join(named)}")
    return found


def _inside_not_table(source: str, node: ast.AST, module: str) -> bool:
    for assign in ast.walk(ast.parse(source)):
        if isinstance(assign, (ast.Assign, ast.AnnAssign)):
            targets = assign.targets if isinstance(assign, ast.Assign) else [assign.target]
            if any((module, ast.unparse(t)) in NOT_TABLES for t in targets):
                end = assign.end_lineno or assign.lineno
                if assign.lineno <= node.lineno <= end:
                    return True
    return False


def test_the_utility_table_is_the_only_list_of_utilities() -> None:
    found = [
        table
        for name, path in _modules().items()
        if name.startswith("conformance") and name != "conformance.utilities"
        for table in utility_tables(path.read_text(), name)
    ]
    assert not found, f"utilities listed outside conformance/utilities.py: {found}"


def test_a_second_table_is_found() -> None:
    old_roots = 'OTHER_ROOTS = {"copy_state_dict": "x", "broadcast_tensors": "y"}'
    old_loads = (
        'if case.utility in ("broadcast_state_dict", "distribute_state_dict", "broadcast_tensors"): pass'
    )
    assert utility_tables(old_roots, "m") and utility_tables(old_loads, "m")
    assert not utility_tables(
        'LAWS = {"a": ("gather_state_dict", "offload_state_dict_to_cpu", "copy_state_dict")}',
        "conformance.laws",
    )


def test_every_suite_property_names_its_contract_rule() -> None:
    """Each property of the suite says, in its docstring, which CONTRACT rule it checks."""
    missing = []
    for path in sorted((ROOT / "conformance" / "suite").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                if not (ast.get_docstring(node) or "").startswith("CONTRACT"):
                    missing.append(f"{path.name}::{node.name}")
    assert not missing, f"suite properties without a CONTRACT docstring: {missing}"
