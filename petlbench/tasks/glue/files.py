"""GLUE from the GLUE distribution's files (one folder per task, tab-separated `train.tsv`
and `dev.tsv`; MNLI's `dev_matched.tsv` and `dev_mismatched.tsv`), read whole and checked
before any run, and split as the official LST code splits the Hugging Face copy of the
same files (`seq2seq/data/tasks.py`), which has no labelled test set:

- CoLA, MRPC, STS-B, RTE: the validation set, shuffled by a torch generator seeded 42,
  halved: its first half validates, its second tests;
- SST-2, QQP, QNLI: the training set, shuffled the same way: its first 1,000 examples
  validate, the rest train; the validation set tests;
- MNLI: validation mismatched validates, validation matched tests.

A cap on a split (`data.train_examples`, ...) keeps the first N of the split in that
shuffled order, as the official ``n_obs``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from petlbench.config import ConfigError, TextDataConfig
from petlbench.tasks.glue.definitions import TextTask
from petlbench.tasks.glue.generated import Example

SHUFFLE_SEED = 42  # the official code's `AbstractTask.seed`
VALIDATION_FROM_TRAIN = 1000  # the official `validation_size` of the large tasks


def read_tsv(path: Path, task: TextTask) -> list[Example]:
    """Every example of one GLUE file, checked: the file exists, has the task's columns, and
    each row has non-empty fields and a label of the task's set (a `ConfigError` naming the
    file and line where not). A header row is read where the task's columns are named."""
    if not path.is_file():
        raise ConfigError(f"{path}: missing (the GLUE {task.folder} folder holds {', '.join(task.files.values())})")
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    named = isinstance(task.columns[0], str)
    first = 1
    if named:
        header = rows[0] if rows else []
        if missing := [c for c in task.columns if c not in header]:
            raise ConfigError(
                f"{path}: line 1: no column {missing[0]!r} in the header (GLUE's {task.folder} has {', '.join(map(repr, task.columns))})"
            )
        columns, first = [header.index(c) for c in task.columns], 2
    else:
        columns = list(task.columns)
    examples = []
    for line, row in enumerate(rows[first - 1 :], first):
        if len(row) <= max(columns):
            raise ConfigError(f"{path}: line {line}: {len(row)} columns; {task.name} needs column {max(columns) + 1}")
        *fields, label = (row[c].strip() for c in columns)
        if empty := [i for i, text in enumerate(fields) if not text]:
            raise ConfigError(f"{path}: line {line}: empty text in column {task.columns[empty[0]]!r}")
        examples.append((tuple(fields), _label(path, line, task, label)))
    if not examples:
        raise ConfigError(f"{path}: no examples")
    return examples


def _label(path: Path, line: int, task: TextTask, text: str) -> str:
    """The label word of a label column's ``text``: STS-B's score rounded to one decimal (as the
    official target), a class's id."""
    if task.regression:
        try:
            score = float(text)
        except ValueError:
            score = -1.0
        if not 0 <= score <= 5:
            raise ConfigError(f"{path}: line {line}: label {text!r} is not a score from 0 to 5")
        return str(round(score, 1))
    word = task.label_words.get(text, text) if task.label_words else text
    if word not in task.labels:
        allowed = ", ".join(task.label_words or task.labels)
        raise ConfigError(f"{path}: line {line}: label {text!r} is not one of {task.name}'s labels ({allowed})")
    return word


def _shuffled(examples: list[Example]) -> list[Example]:
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(SHUFFLE_SEED)).tolist()
    return [examples[i] for i in order]


def _cap(examples: list[Example], n: int) -> list[Example]:
    """The first ``n`` examples of ``examples`` shuffled (all of them, unshuffled, for 0)."""
    return _shuffled(examples)[:n] if n else examples


def glue_splits(data: TextDataConfig, task: TextTask) -> dict[str, list[Example]]:
    """``task``'s train / val / test examples under the official split rule."""
    folder = Path(data.root).expanduser() / task.folder
    read = {split: read_tsv(folder / name, task) for split, name in task.files.items()}
    if task.split_rule == "halve-validation":
        shuffled = _shuffled(read["validation"])
        half = len(shuffled) // 2
        splits = {"train": _cap(read["train"], data.train_examples), "val": shuffled[:half], "test": shuffled[half:]}
        caps = {"val": data.val_examples, "test": data.test_examples}
        return {split: examples[: caps[split]] if caps.get(split) else examples for split, examples in splits.items()}
    if task.split_rule == "train-1000":
        shuffled = _shuffled(read["train"])
        if len(shuffled) <= VALIDATION_FROM_TRAIN:
            raise ConfigError(
                f"{folder / task.files['train']}: {len(shuffled)} examples; {task.name} takes its first {VALIDATION_FROM_TRAIN:,} "
                "(shuffled) for validation and trains on the rest"
            )
        val, train = shuffled[:VALIDATION_FROM_TRAIN], shuffled[VALIDATION_FROM_TRAIN:]
        return {
            "train": train[: data.train_examples] if data.train_examples else train,
            "val": val[: data.val_examples] if data.val_examples else val,
            "test": _cap(read["validation"], data.test_examples),
        }
    return {  # mnli
        "train": _cap(read["train"], data.train_examples),
        "val": _cap(read["validation_mismatched"], data.val_examples),
        "test": _cap(read["validation"], data.test_examples),
    }
