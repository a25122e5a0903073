"""The text-to-text classification tasks, without torch: how each casts an example to a
source text and a label word, its labels, its metrics, and where a GLUE task's examples
are in the GLUE distribution's files and how the official LST code splits them.

The casting follows the LST code (`seq2seq/data/tasks.py`): the source is the task name,
then each field as ``key: text``; the target is the label's id as a word ("0", "1", "2";
STS-B's score with one decimal). MNLI's hypothesis key has no colon there, and so here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A task's metric kinds (petlbench/tasks/glue/metrics.py), in table order; a task's score is their mean.
MCC, ACCURACY, F1, PEARSON, SPEARMAN = "mcc", "acc", "f1", "pearson", "spearman"
METRIC_LABELS = {MCC: "MCC", ACCURACY: "acc.", F1: "F1", PEARSON: "Pearson", SPEARMAN: "Spearman"}


@dataclass(frozen=True)
class TextTask:
    """One classification (or regression) task cast to text."""

    name: str  # the source's prefix, the suite's `data.tasks` entry and its metrics' prefix
    keys: tuple[str, ...]  # the source's field keys, in order ("sentence1:", "sentence2:")
    labels: tuple[str, ...]  # every label word (a regression: its grid, for the target length)
    metrics: tuple[str, ...]  # metric kinds, in table order
    regression: bool = False  # the target is a number: predictions parse as floats (unparsable: -1)
    # GLUE tasks: the folder in the GLUE distribution, its files per split, the columns of
    # each field and of the label, whether the files have a header row, how the label
    # column's text maps to a label word, and the official split rule.
    folder: str = ""
    files: dict[str, str] = field(default_factory=dict)  # "train", "validation", "validation_mismatched" -> file name
    columns: tuple[int | str, ...] = ()  # field columns then the label column: header names, or positions without a header
    label_words: dict[str, str] = field(default_factory=dict)  # column text -> label word (empty: the text is the word)
    split_rule: str = ""  # "halve-validation", "train-1000", "mnli"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{kind}" for kind in self.metrics)


BINARY = ("0", "1")
ENTAILMENT = {"entailment": "0", "not_entailment": "1"}
# STS-B's label grid (0.0, 0.2, ..., 5.0): what the official code measures the target length by.
STSB_GRID = tuple(f"{i / 5:.1f}" for i in range(26))

GLUE = {
    task.name: task
    for task in (
        TextTask("cola", ("sentence:",), BINARY, (MCC,), folder="CoLA", files={"train": "train.tsv", "validation": "dev.tsv"},
                 columns=(3, 1), split_rule="halve-validation"),
        TextTask("sst2", ("sentence:",), BINARY, (ACCURACY,), folder="SST-2", files={"train": "train.tsv", "validation": "dev.tsv"},
                 columns=("sentence", "label"), split_rule="train-1000"),
        TextTask("mrpc", ("sentence1:", "sentence2:"), BINARY, (F1, ACCURACY), folder="MRPC",
                 files={"train": "train.tsv", "validation": "dev.tsv"}, columns=("#1 String", "#2 String", "Quality"),
                 split_rule="halve-validation"),
        TextTask("qqp", ("question1:", "question2:"), BINARY, (F1, ACCURACY), folder="QQP",
                 files={"train": "train.tsv", "validation": "dev.tsv"}, columns=("question1", "question2", "is_duplicate"),
                 split_rule="train-1000"),
        TextTask("stsb", ("sentence1:", "sentence2:"), STSB_GRID, (PEARSON, SPEARMAN), regression=True, folder="STS-B",
                 files={"train": "train.tsv", "validation": "dev.tsv"}, columns=("sentence1", "sentence2", "score"),
                 split_rule="halve-validation"),
        TextTask("mnli", ("premise:", "hypothesis"), ("0", "1", "2"), (ACCURACY,), folder="MNLI",
                 files={"train": "train.tsv", "validation": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
                 columns=("sentence1", "sentence2", "gold_label"), label_words={"entailment": "0", "neutral": "1", "contradiction": "2"},
                 split_rule="mnli"),
        TextTask("qnli", ("question:", "sentence:"), BINARY, (ACCURACY,), folder="QNLI",
                 files={"train": "train.tsv", "validation": "dev.tsv"}, columns=("question", "sentence", "label"),
                 label_words=ENTAILMENT, split_rule="train-1000"),
        TextTask("rte", ("sentence1:", "sentence2:"), BINARY, (ACCURACY,), folder="RTE",
                 files={"train": "train.tsv", "validation": "dev.tsv"}, columns=("sentence1", "sentence2", "label"),
                 label_words=ENTAILMENT, split_rule="halve-validation"),
    )
}  # fmt: skip

# The embedded tasks, in the GLUE shapes (petlbench/tasks/glue/generated.py makes them).
GENERATED = {
    task.name: task
    for task in (
        # one description: is the spatial relation it states true? (CoLA's shape)
        TextTask("consistency", ("sentence:",), BINARY, (MCC,)),
        # two descriptions: of the same scene? (MRPC's shape)
        TextTask("paraphrase", ("sentence1:", "sentence2:"), BINARY, (F1, ACCURACY)),
        # two single-object descriptions: how many of shape, colour, size, row and column they share (STS-B's shape)
        TextTask("overlap", ("sentence1:", "sentence2:"), tuple(f"{k:.1f}" for k in range(6)), (PEARSON, SPEARMAN), regression=True),
    )
}

TASKS_OF_KIND = {"generated": GENERATED, "glue": GLUE}


def source_text(task: TextTask, fields: tuple[str, ...]) -> str:
    """The source of one example: the task's name, then each field after its key."""
    return " ".join([task.name, *(f"{key} {text}" for key, text in zip(task.keys, fields, strict=True))])


def score_value(text: str) -> float:
    """A regression prediction or target as a number; -1 where it does not parse (as the official code)."""
    try:
        return float(text)
    except ValueError:
        return -1.0
