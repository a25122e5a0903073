"""The shape of the code base, checked: imports point one way with no cycle (function-level
imports included), methods never ask which backbone family they got and read nothing of it
but the backbone interface, defaults live in one place, every method declares its learning-rate grid, and docs/measurement.md's record table lists
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
        ("petlbench.measure", ("petlbench.train", "petlbench.tasks", "petlbench.plan", "petlbench.sweep", "petlbench.estimate")),
        ("petlbench.plan", ("petlbench.isolation", "petlbench.sweep")),
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
    """Tables, plots and comparisons sit on top: only the command line imports them (`cli`,
    and `launch`, which runs its sweeps and their report as cluster jobs)."""
    graph = import_graph()
    for module, imported in graph.items():
        if not module.startswith("petlbench.report") and module not in ("petlbench.cli", "petlbench.launch"):
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
            if re.search(r"[\"'](vse|clip|t5)[\"']", line) and path.name != "specs.py":
                assert re.search(r"\.builder\([\"'](vse|clip|t5)[\"']", line), f"{path.name}:{number}: {line.strip()}"
            assert ".family" not in line, f"{path.name}:{number}: {line.strip()}"


def _library_models() -> set[str]:
    """The attribute names under which each backbone family holds its library models (a
    transformers `PreTrainedModel`): private to the family, whatever it calls them."""
    from transformers import CLIPConfig, CLIPModel, PreTrainedModel, T5Config, T5ForConditionalGeneration

    from petlbench.models.clip import ClipDualEncoder
    from petlbench.models.t5 import T5EncoderDecoder
    from petlbench.models.vse import tiny_vse

    tiny = {"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1}
    clip = ClipDualEncoder(CLIPModel(CLIPConfig(text_config=tiny, vision_config={**tiny, "image_size": 8, "patch_size": 4})))
    t5 = T5EncoderDecoder(T5ForConditionalGeneration(T5Config(vocab_size=16, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)))
    families = (clip, tiny_vse(), t5)
    return {name for family in families for name, child in family.named_children() if isinstance(child, PreTrainedModel)}


def library_reaches(tree: ast.AST, private: set[str], interface: set[str]) -> list[tuple[int, str]]:
    """(line, code) of every reach past the backbone interface in ``tree``: an attribute (or
    a `getattr` by constant name) that is one of the families' library models (``private``),
    or any `config` or `*_config` that is not a member of the ``interface`` (in a method
    module that is only ever a library model's config or sub-config: a method's own options
    are `cfg`); a `getattr` whose name is built from parts naming a config
    (``f"{tower}_config"``) too. A reach inside another (``backbone.clip`` in
    ``backbone.clip.config``) is reported once, as the outer one."""

    def banned(name: str) -> bool:
        return name in private or ((name == "config" or name.endswith("_config")) and name not in interface)

    def reaches(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return banned(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) > 1:
            name = node.args[1]
            parts = name.values if isinstance(name, ast.JoinedStr) else [name]
            return any(isinstance(p, ast.Constant) and isinstance(p.value, str) and (banned(p.value) or "config" in p.value) for p in parts)
        return False

    flagged = [node for node in ast.walk(tree) if reaches(node)]
    inner = {id(sub) for node in flagged for sub in ast.walk(node) if sub is not node}
    return sorted((node.lineno, ast.unparse(node)) for node in flagged if id(node) not in inner)


def test_library_reaches_are_found():
    source = (
        "a = b.clip.x\nc = getattr(d, f'{t}_config').w\ne = getattr(f, 'bert')\ng = h.blocks()[0].config\n"
        "cfg.r, getattr(x, 'y'), k.block_config('text'), k.config_cls\ni = j.vision_config\nl = m.layer.config"
    )
    found = library_reaches(ast.parse(source), {"clip", "bert"}, {"block_config"})
    assert found == [
        (1, "b.clip"),
        (2, "getattr(d, f'{t}_config')"),
        (3, "getattr(f, 'bert')"),
        (4, "h.blocks()[0].config"),
        (6, "j.vision_config"),
        (7, "m.layer.config"),
    ]


def test_methods_read_only_the_backbone_interface():
    """No method reaches past the backbone interface (`Backbone` and its kinds) into the library models a family wraps (their
    attribute layout and configs change between library versions, and differ per family):
    what a method needs of a backbone is on the interface, by role (`block_config` is the
    one way a method gets a library config, for building blocks of the tower's kind)."""
    from petlbench.models.backbone import Backbone, DualEncoder, EncoderDecoder

    private = _library_models()
    assert private  # the families do hold library models: the rule has something to find
    interface = set(vars(Backbone)) | set(vars(DualEncoder)) | set(vars(EncoderDecoder))
    found = [
        f"{path.name}:{line}: {code}"
        for path in sorted((PACKAGE / "methods").glob("*.py"))
        for line, code in library_reaches(ast.parse(path.read_text()), private, interface)
    ]
    assert not found, f"{len(found)} reaches past the backbone interface:\n" + "\n".join(found)


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


def _documented_record_table() -> dict[str, list[str]]:
    """docs/measurement.md's table of every record section and its fields."""
    text = (PROJECT_ROOT / "docs/measurement.md").read_text()
    block = text[text.index("| section | fields |") :].split("\n\n")[0]
    rows = {}
    for line in block.splitlines()[2:]:
        section, fields = (cell.strip() for cell in line.strip().strip("|").split("|", 1))
        rows[section.strip("`")] = re.findall(r"`([a-z0-9_]+)`", fields)
    return rows


def test_the_documented_record_table_lists_the_schema():
    table = _documented_record_table()
    expected = {"record": schema.fields_of(schema.Record), **{name: schema.fields_of(cls) for name, cls in schema.SECTIONS.items()}}
    assert table == expected
