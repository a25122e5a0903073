"""The project documents itself: no file cites a document outside the repository, every
registered method has its section in docs/methods.md (with each of its options and the
trainable counts the code gives), and docs/measurement.md explains every key of a result
record."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import typing
from pathlib import Path

import pytest
import torch

from petlbench import records, schema
from petlbench.config import PROJECT_ROOT, MethodConfig, SuiteConfig, load_suite
from petlbench.measure.kernels import cuda_settings
from petlbench.methods import get_method, registered
from petlbench.models.loader import load_architecture
from petlbench.registry import UnsupportedError
from petlbench.tasks import registered as registered_tasks
from petlbench.train import prepare
from petlbench.variants import data_free, load_variant, shipped

DOCS = PROJECT_ROOT / "docs"
METHODS_DOC = DOCS / "methods.md"
MEASUREMENT_DOC = DOCS / "measurement.md"
THIS_FILE = Path(__file__).resolve()

# Names of files the project writes (not documents it cites): `petlbench run` and `report`
# write report.md; scripts/lr_sweep.py and tests/test_near.py name their own output tables.
WRITTEN = {"report.md", "lr.md", "lr-f30k.md"}
# A path that climbs out of the folder it starts from (`../x`, `../../x`).
CLIMBING = re.compile(r"(?<![A-Za-z0-9_.])(?:\.\./)+[A-Za-z0-9_.-]+")
MARKDOWN_REFERENCE = re.compile(r"[A-Za-z0-9_./~-]*[A-Za-z0-9_-]\.md\b")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


def _project_files() -> list[Path]:
    """Every file of the project: tracked by git, or new and not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({PROJECT_ROOT / name for name in out.decode().split("\0") if name})


def _text(path: Path) -> str | None:
    """The file's text; None for a binary file (or one gone since git listed it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _resolves(reference: str, citing: Path) -> bool:
    """``reference`` names a file of the repository: relative to the citing file's folder or
    to one of the folders above it, up to the repository root."""
    folder = citing.parent
    while True:
        if (folder / reference).is_file():
            return True
        if folder == PROJECT_ROOT or folder == folder.parent:
            return False
        folder = folder.parent


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(PROJECT_ROOT.resolve())


def outside_citations(path: Path, text: str) -> list[str]:
    """What ``text`` (the file ``path``) cites outside the repository: a place outside it,
    or a Markdown document that is no file of the repository (`docs/NAME.md`, or a path
    from the citing file's folder or one above it). Web addresses are left alone."""
    # an absolute path into a place beside the repository that is there (an example path is not)
    places = [
        m for m in re.findall(rf"{re.escape(str(PROJECT_ROOT.parent))}/[^\s'\"`)]*", text) if not _inside(Path(m)) and Path(m).exists()
    ]
    # a relative path that leaves the repository for a place that is there (notes kept beside it)
    places += [m for m in CLIMBING.findall(text) if not _inside(path.parent / m) and (path.parent / m).exists()]
    found = [f"{path.relative_to(PROJECT_ROOT)}: {place!r}" for place in places]
    for reference in MARKDOWN_REFERENCE.findall(URL.sub("", text)):
        if Path(reference).name not in WRITTEN and not _resolves(reference, path):
            found.append(f"{path.relative_to(PROJECT_ROOT)}: {reference!r}")
    return found


def test_the_rule_finds_outside_citations():
    here = PROJECT_ROOT / "petlbench" / "measure" / "memory.py"
    assert outside_citations(here, "see measurement.md, section X") == ["petlbench/measure/memory.py: 'measurement.md'"]
    assert outside_citations(here, "see notes/design.md") != []  # no such file in the repository
    beside = next(p for p in PROJECT_ROOT.parent.iterdir() if p.resolve() != PROJECT_ROOT.resolve())
    assert outside_citations(here, f"see {beside}") != []
    climbing = "../" * len(here.relative_to(PROJECT_ROOT).parts) + beside.name
    assert outside_citations(here, f"see {climbing}") != []
    assert outside_citations(here, "see ../../../escape, a name that leads nowhere") == []
    # from the root, from a folder above the citing file (petlbench/), and a web address
    fine = "see docs/design.md, the README.md, assets/architectures/README.md and https://example.org/x/methods.md"
    assert outside_citations(here, fine) == []
    assert outside_citations(here, "writes report.md next to its records") == []


def test_no_file_cites_a_document_outside_the_repository():
    found = []
    for path in _project_files():
        if path == THIS_FILE:  # the rule's own patterns name what it looks for
            continue
        text = _text(path)
        if text is not None:
            found += outside_citations(path, text)
    assert not found, "cited outside the repository:\n" + "\n".join(found)


# ------------------------------------------------------------------------------ methods.md


def _sections(text: str) -> dict[str, str]:
    """Method name -> the text of its section: a heading (level 2 to 4) that names the
    method in backticks, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    headings = [(i, len(m[1]), m[2]) for i, line in enumerate(lines) if (m := re.match(r"(#{2,4}) (.*)", line))]
    out = {}
    for n, (i, level, title) in enumerate(headings):
        end = next((j for j, lv, _ in headings[n + 1 :] if lv <= level), len(lines))
        for name in re.findall(r"`([a-z0-9-]+)`", title):
            out.setdefault(name, "\n".join(lines[i:end]))
    return out


@pytest.fixture(scope="module")
def method_sections() -> dict[str, str]:
    return _sections(METHODS_DOC.read_text())


@pytest.mark.parametrize("method", sorted(registered()))
def test_every_method_has_a_section_naming_its_options(method, method_sections):
    assert method in method_sections, f"docs/methods.md has no section headed `{method}`"
    section = method_sections[method]
    options = [f.name for f in dataclasses.fields(registered()[method].config_cls) if f.name != "lr"]
    missing = [name for name in options if f"`{name}`" not in section]
    assert not missing, f"the section of `{method}` does not name its options {missing}"


def test_every_shipped_variant_is_named():
    text = METHODS_DOC.read_text()
    assert not [v for v in shipped() if f"`{v}`" not in text]


def _count_table(text: str) -> dict[str, list[int | None]]:
    """The table of trainable parameters: variant -> its counts, column by column (None for
    a family the method does not apply to)."""
    block = text[text.index("| variant | method | CLIP ViT-B/32 |") :].split("\n\n")[0]
    rows = {}
    for line in block.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = [int(c.replace(",", "")) if c[0].isdigit() else None for c in cells[2:]]
    return rows


# The architectures of the count table's columns, in order.
COUNTED = ("clip-vit-base-patch32", "embedded-clip", "resnet50-bert-base", "t5-base")


@pytest.mark.slow
def test_the_trainable_counts_are_the_codes():
    """Every shipped variant applied (as the estimate applies it, under the training rules of
    `vl-retrieval`) to each architecture built on `meta`: its trainable parameters."""
    table = _count_table(METHODS_DOC.read_text())
    assert sorted(table) == shipped()
    train = load_suite("vl-retrieval").train
    for column, name in enumerate(COUNTED):
        architecture = load_architecture(name)
        for variant in map(load_variant, shipped()):
            if get_method(variant.method).unsupported_reason(architecture.family) is not None:
                assert table[variant.name][column] is None, f"{variant.name} on {name}"
                continue
            with torch.device("meta"):
                backbone = architecture.build("sdpa")
            try:
                model = prepare(backbone, train, data_free(variant))
            except UnsupportedError:  # the method applies to the family, this variant does not (deep prompts on T5)
                assert table[variant.name][column] is None, f"{variant.name} on {name}"
                continue
            count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            assert table[variant.name][column] == count, f"{variant.name} on {name}"


# -------------------------------------------------------------------------- measurement.md

# Keys of a record whose names are data (a metric, a variant, a method's option): each is
# explained once, under a placeholder.
DYNAMIC = {
    "metrics.values": "<metric>",
    "metrics.evaluated": "<item>",
    "metrics.folds.values": "<metric>",
    "metrics.folds.evaluated": "<item>",
    "config.suite.learning_rates": "<variant>",
}


def _collapse(path: str) -> str:
    for prefix, placeholder in DYNAMIC.items():
        if path == prefix or path.startswith(prefix + "."):
            return f"{prefix}.{placeholder}"
    if path.startswith("config.method.") and path not in ("config.method.name", "config.method.lr"):
        return "config.method.<option>"
    return path


def _leaves(value, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [p for key, item in value.items() for p in _leaves(item, f"{prefix}.{key}" if prefix else key)]
    return [prefix]


def _fields(cls: type, prefix: str) -> list[str]:
    """Every field of dataclass ``cls`` and of the dataclasses it holds, as dotted paths."""
    out = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        out.append(path)
        hint = typing.get_type_hints(cls)[f.name]
        for tp in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(tp):
                out += _fields(tp, path)
    return out


def committed_records() -> list[Path]:
    return [
        path
        for path in _project_files()
        if path.is_relative_to(PROJECT_ROOT / "results") and path.suffix == records.SUFFIX and path.name != records.MANIFEST
    ]


def record_keys() -> set[str]:
    """Every key path of a schema-3 record: those of the committed records, read as the
    reader reads them (schemas 1 and 2 become 3), and every field the schema, the suite
    config, the method config and the environment can hold; keys that are data collapsed."""
    paths = [p for path in committed_records() for p in _leaves(records.read(path))]
    paths += _fields(schema.Record, "")
    paths += _fields(SuiteConfig, "config.suite")
    paths += [f"config.method.{f.name}" for f in dataclasses.fields(MethodConfig)] + ["config.method.name"]
    paths += [f"env.{key}" for key in (*records.environment(torch.device("cpu")), *cuda_settings())]
    return {_collapse(p) for p in paths}


def test_there_are_committed_records_to_read():
    assert len(committed_records()) > 10


def test_measurement_explains_every_key_of_a_record():
    explained = set(re.findall(r"`([^`\n]+)`", MEASUREMENT_DOC.read_text()))
    missing = sorted(record_keys() - explained)
    assert not missing, f"docs/measurement.md does not explain {missing}"


def test_measurement_names_every_metric_of_every_shipped_task():
    explained = set(re.findall(r"`([^`\n]+)`", MEASUREMENT_DOC.read_text()))
    shipped_tasks = [spec for spec in registered_tasks().values() if spec.module.startswith("petlbench.")]
    missing = [m.name for spec in shipped_tasks for m in spec.metrics if m.name not in explained]
    assert shipped_tasks and not missing


def test_every_test_the_reliability_page_cites_exists():
    """docs/reliability.md backs each claim with the tests that hold it: a test renamed or
    removed must take its claim with it."""
    cited = set(re.findall(r"`(test_[a-z0-9_]+)`", (DOCS / "reliability.md").read_text()))
    defined = {
        name for path in (PROJECT_ROOT / "tests").glob("test_*.py") for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)
    }
    assert len(cited) > 20 and not cited - defined, sorted(cited - defined)
