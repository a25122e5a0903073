"""Result records as one tidy pandas DataFrame: the report layer's data model, and the way
to read a folder of records in a notebook.

    frame = petlbench.results.load("results/baselines/vl-retrieval-ci")
    frame[frame.status == "ok"].groupby("variant")[["train_peak_bytes", "metric.rsum"]].agg(["mean", "std"])

One row per run (record), in the order `petlbench.records.read_folders` returns them (it
does the reading, the integrity checks and the handling of copies); the columns are
`COLUMNS` (a figure a record lacks — a failed run, an estimate's evaluation — is missing:
None or NaN), then per metric of any record ``metric.<name>`` (its value), ``folds.<name>``
(its mean over the evaluation folds) and ``train_breakdown.<category>`` (bytes of the
train peak by category). Metric columns are prefixed so that records of several tasks
coexist without a metric name clashing with a run field; ``primary`` holds each record's
own primary metric (the task's, named in ``primary_metric``), so that one column ranks
runs of any task. docs/results-api.md describes every column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petlbench.config import DEFAULT_TASK

if TYPE_CHECKING:
    import pandas as pd

METRIC, FOLDS, BREAKDOWN = "metric.", "folds.", "train_breakdown."
PRIMARY = "primary"


def _memory(key: str) -> Callable[[dict], Any]:
    return lambda r: r["cost"]["memory"][key]


def _budget(key: str) -> Callable[[dict], Any]:
    return lambda r: r["budget"][key]


# How each column other than a metric or a breakdown category is read from a record, in
# base units (bytes, parameters, seconds); the one place a figure is read from a record.
COLUMNS: dict[str, Callable[[dict], Any]] = {
    **{key: (lambda k: lambda r: r["run"][k])(key) for key in ("suite", "suite_version", "suite_hash", "run_hash", "variant", "method")},
    **{key: (lambda k: lambda r: r["run"][k])(key) for key in ("seed", "status", "error", "finished")},
    "task": lambda r: (r["metrics"] or {}).get("task") or r["config"]["suite"].get("task", DEFAULT_TASK),
    "primary_metric": lambda r: r["metrics"]["primary"],
    PRIMARY: lambda r: r["metrics"]["values"][r["metrics"]["primary"]],
    "params_trainable": lambda r: r["cost"]["params_trainable"],
    "params_total": lambda r: r["cost"]["params_total"],
    "params_percent": lambda r: 100 * r["cost"]["params_trainable"] / r["cost"]["params_total"],
    "memory_source": _memory("source"),
    "train_peak_bytes": _memory("train_peak_bytes"),
    "eval_peak_bytes": _memory("eval_peak_bytes"),
    "train_reserved_peak_bytes": _memory("train_reserved_peak_bytes"),
    "eval_reserved_peak_bytes": _memory("eval_reserved_peak_bytes"),
    "step_time_s": lambda r: r["cost"]["step_time_s_median"],
    "data_wait_s": lambda r: r["cost"]["data_wait_s_median"],
    "eval_s": lambda r: r["cost"]["eval_s"],
    "wall_s": lambda r: r["cost"]["wall_s"],
    "budget_bytes": _budget("bytes"),
    "budget_batch": _budget("batch_size"),
    "budget_steps": _budget("steps"),
    "budget_schedule": _budget("schedule"),
    "grad_checkpointing": _budget("grad_checkpointing"),
}


def value(record: dict, column: str) -> Any:
    """``column`` of one record (a key of `COLUMNS`, or ``metric.``, ``folds.`` or
    ``train_breakdown.`` and a name), or None where the record lacks it."""
    try:
        if column in COLUMNS:
            return COLUMNS[column](record)
        for prefix, section in ((METRIC, lambda r: r["metrics"]["values"]), (FOLDS, lambda r: r["metrics"]["folds"]["values"])):
            if column.startswith(prefix):
                return section(record)[column.removeprefix(prefix)]
        if column.startswith(BREAKDOWN):
            return record["cost"]["memory"]["train_breakdown"][column.removeprefix(BREAKDOWN)]
    except (KeyError, TypeError):  # the section or the key is absent (None for a failed run)
        return None
    raise KeyError(f"no column {column!r} in a record frame")


def _named(record: dict) -> list[str]:
    """The prefixed columns ``record`` fills, in its order."""
    metrics = record.get("metrics") or {}
    breakdown = ((record.get("cost") or {}).get("memory") or {}).get("train_breakdown") or {}
    return [
        *(METRIC + name for name in metrics.get("values") or {}),
        *(FOLDS + name for name in (metrics.get("folds") or {}).get("values") or {}),
        *(BREAKDOWN + name for name in breakdown),
    ]


def frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per record (index 0, 1, ... in the order given), a column per `COLUMNS` key
    and per metric and breakdown category that any record holds (in order of first
    appearance)."""
    import pandas as pd  # here, not at the top: the commands that build no frame (`list`, `--help`) stay light

    records = list(records)
    columns = list(COLUMNS) + list(dict.fromkeys(c for r in records for c in _named(r)))
    return pd.DataFrame([[value(r, c) for c in columns] for r in records], columns=columns)


def load(directories: str | Path | Iterable[str | Path], strict: bool = False) -> pd.DataFrame:
    """The records of one folder or several (`petlbench.records.read_folders`: a budget
    sweep's parent stands for its subfolders; ``strict``: a file that is not a record, or
    two files of one run, is an error) as one `frame`."""
    from petlbench.records import read_folders  # imports torch: only when reading folders

    folders = [directories] if isinstance(directories, (str, Path)) else list(directories)
    return frame(read_folders([Path(d) for d in folders], strict))
