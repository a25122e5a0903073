"""The shape of the code base, checked: imports point one way with no cycle (function-level
imports included), methods never ask which backbone family they got, defaults live in one
place, every method declares its learning-rate grid, and the README's record table lists
exactly the record schema's fields."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from petlbench import schema
from petlbench.config import PROJECT_ROOT
from petlbench.methods import get_method, registered
from petlbench.variants import shipped

PACKAGE = PROJECT_ROOT / "petlbench"


def _module(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """petlbench module -> the petlbench modules it imports, at any level of the file
    (inside functions too); `from a import b` counts b when b is a module of a."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("petlbench"):
                found = {node.module} | {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                found = {a.name for a in node.names if a.name.startswith("petlbench")}
            else:
                continue
            graph[name] |= {m for m in found if m in modules and m != name}
    for name, path in modules.items():  # imports only for type checkers are not imports
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and inner.module:
                        graph[name].discard(inner.module)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    # a package imports its own modules (petlbench.methods imports each method); a module
    # importing its package's __init__ back is then not a cycle Python trips on, but nothing does it
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize(
    "layer, never",
    [
        ("petlbench.measure", ("petlbench.train", "petlbench.tasks", "petlbench.sweep", "petlbench.estimate")),
        ("petlbench.tasks", ("petlbench.measure", "petlbench.train", "petlbench.methods", "petlbench.registry", "petlbench.report")),
        ("petlbench.config", ("petlbench.registry", "petlbench.methods", "petlbench.variants", "petlbench.tasks")),
        ("petlbench.models", ("petlbench.methods", "petlbench.registry", "petlbench.train", "petlbench.tasks")),
        ("petlbench.methods", ("petlbench.tasks",)),
    ],
)
def test_layers_point_one_way(layer, never):
    graph = import_graph()
    for module in (m for m in graph if m == layer or m.startswith(layer + ".")):
        reached = _reaches(graph, module)
        assert not {m for m in reached for n in never if m == n or m.startswith(n + ".")}, (module, sorted(reached))


def test_no_module_below_the_reports_imports_them():
    """Tables, plots and comparisons sit on top: only the command line imports them."""
    graph = import_graph()
    for module, imported in graph.items():
        if not module.startswith("petlbench.report") and module != "petlbench.cli":
            assert not {m for m in imported if m.startswith("petlbench.report")}, module


def test_no_module_outside_a_task_imports_its_internals():
    """The rest of petlbench reaches a task through the registry (`petlbench.tasks`) and the
    interface it implements (`petlbench.tasks.base`), never through a task's own modules."""
    graph = import_graph()
    public = {"petlbench.tasks", "petlbench.tasks.base"}
    for module, imported in graph.items():
        if not module.startswith("petlbench.tasks."):
            assert not {m for m in imported if m.startswith("petlbench.tasks") and m not in public}, module
        else:
            own = ".".join(module.split(".")[:3])
            others = {m for m in imported if m.startswith("petlbench.tasks.") and m not in public and not m.startswith(own)}
            assert not others, (module, others)


HEAVY = ("torch", "transformers", "peft", "numpy", "matplotlib")


@pytest.mark.parametrize("argv", [["list"], ["--help"], ["run", "--suite"], ["estimate", "--model", "x", "--batch-size", "0"]])
def test_looking_commands_import_no_heavy_library(argv):
    """`list`, `--help` and argument errors read specs, YAML and dataclass defaults only: a
    fresh interpreter runs them without importing torch (seconds on 2 cores) or the rest."""
    probe = (
        "import sys\n"
        "from petlbench.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert done.stdout.splitlines()[-1] == "[]", done.stderr


def test_no_method_asks_for_the_family():
    """Families appear in method implementations only as builder registrations (the specs
    declare which families each method applies to)."""
    for path in (PACKAGE / "methods").glob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"[\"'](vse|clip)[\"']", line) and path.name != "specs.py":
                assert re.search(r"\.builder\([\"'](vse|clip)[\"']", line), f"{path.name}:{number}: {line.strip()}"
            assert ".family" not in line, f"{path.name}:{number}: {line.strip()}"


@pytest.mark.parametrize("variant", shipped())
def test_a_method_yaml_holds_only_what_differs_from_the_defaults(variant):
    data = yaml.safe_load((PROJECT_ROOT / "methods" / f"{variant}.yaml").read_text())
    spec = get_method(data.pop("method"))
    assert "lr" in data, "every variant states its learning rate (from the validation sweep)"
    defaults = {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory() for f in dataclasses.fields(spec.config_cls)
    }
    restated = {key: value for key, value in data.items() if key != "lr" and defaults.get(key) == value}
    assert not restated, f"methods/{variant}.yaml restates defaults of {spec.config_cls.__name__}: {restated}"


@pytest.mark.parametrize("method", sorted(registered()))
def test_every_method_declares_its_learning_rate_grid_and_its_builders(method):
    spec = registered()[method]
    assert len(spec.lr_grid) >= 3 and list(spec.lr_grid) == sorted(spec.lr_grid)
    assert spec.builders and spec.builders.keys() == spec.keeps.keys()


def _readme_record_table() -> dict[str, list[str]]:
    text = (PROJECT_ROOT / "README.md").read_text()
    block = text[text.index("| section | fields |") :].split("\n\n")[0]
    rows = {}
    for line in block.splitlines()[2:]:
        section, fields = (cell.strip() for cell in line.strip().strip("|").split("|", 1))
        rows[section.strip("`")] = re.findall(r"`([a-z0-9_]+)`", fields)
    return rows


def test_the_readme_record_table_lists_the_schema():
    table = _readme_record_table()
    expected = {"record": schema.fields_of(schema.Record), **{name: schema.fields_of(cls) for name, cls in schema.SECTIONS.items()}}
    assert table == expected
