"""A GLUE distribution folder made by the tests: each task's files as the GLUE download
lays them out (header rows, columns, label spellings), with a few rows each (the tasks
that take 1,000 training examples for validation get just over that many)."""

from __future__ import annotations

from pathlib import Path

from petlbench.tasks.glue.definitions import GLUE

WORDS = "the a cat dog sat on mat ran far good bad movie was very not".split()


def _sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + i % 4))


def _label(task: str, i: int) -> str:
    if task == "stsb":
        return f"{(i * 37 % 51) / 10:.3f}"
    if task == "mnli":
        return ("entailment", "neutral", "contradiction")[i % 3]
    if task in ("qnli", "rte"):
        return ("entailment", "not_entailment")[i % 2]
    return str(i % 2)


def rows(task: str, n: int) -> list[list[str]]:
    """``n`` rows of ``task``'s file, header first where GLUE has one."""
    spec = GLUE[task]
    if task == "cola":  # no header: source, label, original label, sentence
        return [["gj04", _label(task, i), "", _sentence(i)] for i in range(n)]
    header = list(spec.columns)
    body = []
    for i in range(n):
        fields = [_sentence(i), _sentence(i + 1)][: len(spec.columns) - 1]
        body.append([*fields, _label(task, i)])
    extra = ["index"]  # a column the reader must skip: columns are found by name
    return [extra + header] + [[str(i), *row] for i, row in enumerate(body)]


def write(path: Path, table: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in table), encoding="utf-8")


SIZES = {"train": 40, "validation": 20, "validation_mismatched": 16}
LARGE_TRAIN = 1_012  # 1,000 validate, 12 train


def make_glue_folder(root: Path, tasks: tuple[str, ...] = tuple(GLUE)) -> Path:
    for task in tasks:
        spec = GLUE[task]
        for split, name in spec.files.items():
            n = LARGE_TRAIN if split == "train" and spec.split_rule == "train-1000" else SIZES[split]
            write(root / spec.folder / name, rows(task, n))
    return root
