"""Paper-style tables: one row per variant (mean ± std over seeds) or per run, in the
column order papers use (the task's metrics in its order), as Markdown, LaTeX (booktabs)
or CSV.

A run that did not finish shows its status ("OOM", "diverged", ...) in place of its
figures, never a zero; records of different suite configurations never share a table.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from tabulate import tabulate

from petlbench.report import (
    Group,
    budget_families,
    by_suite,
    by_task,
    group,
    primary_metric,
    source_label,
    sources,
    split_note,
    status_label,
    suite_names,
    suite_title,
    task_of,
)
from petlbench.results import FOLDS, METRIC, PRIMARY, value
from petlbench.tasks import Metric, TaskSpec
from petlbench.units import memory_unit, size_label

BY = {"variant": ("variant",), "variant,seed": ("variant", "seed")}
FORMATS = ("md", "latex", "csv")


@dataclass(frozen=True)
class Column:
    figure: str  # a column of `petlbench.results.frame`
    header: str  # with "{unit}" (the table's memory unit) and "{source}" (its memory source)
    decimals: int
    lower_is_better: bool
    scale: float | None = 1  # base unit per displayed unit; None: the table's memory unit
    ranked: bool = True  # whether LaTeX bolds its best value (not for a setting such as the batch size)


COST_COLUMNS = (
    Column("params_trainable", "trainable (M)", 3, True, scale=1e6),
    Column("params_percent", "trainable (%)", 2, True),
    Column("budget_batch", "batch", 0, False, ranked=False),
    Column("budget_steps", "steps", 0, False, ranked=False),
    Column("train_peak_bytes", "train peak ({unit}{source})", 2, True, scale=None),
    Column("step_time_s", "step time (ms)", 1, True, scale=1e-3),
    Column("data_wait_s", "data wait (ms)", 1, True, scale=1e-3),
)
EVAL_COLUMNS = (
    Column("eval_peak_bytes", "eval peak ({unit})", 2, True, scale=None),
    Column("eval_s", "eval time (s)", 1, True),
)
# The summary `petlbench run` prints after a sweep.
SUMMARY_COLUMNS = ("params_trainable", "train_peak_bytes", PRIMARY)


def metric_column(metric: Metric, figure: str | None = None, header: str | None = None) -> Column:
    """The column of ``metric`` (read as ``figure``, default its ``metric.<name>``), one decimal."""
    return Column(figure or METRIC + metric.name, header or metric.label, 1, not metric.higher_is_better)


def columns(task: TaskSpec) -> tuple[Column, ...]:
    """Every column a full table may show for ``task``: the cost, each metric, the primary
    metric's mean over the evaluation folds, the evaluation's cost."""
    primary = task.primary_metric
    return (
        *COST_COLUMNS,
        *(metric_column(m) for m in task.metrics),
        metric_column(primary, FOLDS + primary.name, f"{primary.label} (fold mean)"),
        *EVAL_COLUMNS,
    )


@dataclass
class Cell:
    """A figure over one row's successful runs; ``label`` where none succeeded."""

    mean: float | None = None
    std: float | None = None
    label: str = "-"

    def text(self, decimals: int, pm: str = " ± ") -> str:
        """A spread of exactly zero (parameter counts, exact CPU memory) is left out."""
        if self.mean is None:
            return self.label
        out = f"{self.mean:.{decimals}f}"
        return f"{out}{pm}{self.std:.{decimals}f}" if self.std else out


@dataclass
class Table:
    """One suite configuration's rows, ready to render."""

    title: str
    per_run: bool  # one row per (variant, seed), else per variant with the spread over seeds
    key_headers: list[str]
    keys: list[list[str]]
    columns: list[Column]
    headers: list[str]
    cells: list[list[Cell]]


def _cell(row: Group, column: Column, scale: float) -> Cell:
    if not row.ok:
        return Cell(label=row.failure_label())
    stats = row.stats(column.figure, scale)
    return Cell(*stats[:2]) if stats else Cell()


def build(records: list[dict], by: str = "variant", figures: tuple[str, ...] | None = None) -> Table:
    """The table of one suite configuration's records (``figures``: a subset of columns)."""
    per_seed = "seed" in BY[by]
    mixed = len(sources(records)) > 1  # then the source is a column, not a header note
    rows = group(records, BY[by])
    unit, unit_bytes = memory_unit(value(r, f) for r in records for f in ("train_peak_bytes", "eval_peak_bytes"))
    # A figure no run recorded (evaluation in an estimate) has no column; where no run
    # succeeded, every column stays to show the status.
    succeeded = any(r["run"]["status"] == "ok" for r in records)
    primary = METRIC + primary_metric(records).name
    wanted = None if figures is None else {primary if f == PRIMARY else f for f in figures}
    shown = [
        c
        for c in columns(task_of(records[0]))
        if (wanted is None or c.figure in wanted) and not (succeeded and all(value(r, c.figure) is None for r in records))
    ]
    source = "" if mixed else f", {source_label(records)}"
    keys = [
        [
            row.variant + (" (checkpointing)" if any((r.get("budget") or {}).get("grad_checkpointing") for r in row.records) else ""),
            row.method,
            *([str(row.records[0]["run"]["seed"]), status_label(row.records[0]["run"]["status"])] if per_seed else [row.status_counts()]),
            *([source_label(row.records)] if mixed else []),
        ]
        for row in rows
    ]
    return Table(
        title=suite_title(records),
        per_run=per_seed,
        key_headers=["variant", "method", *(["seed", "status"] if per_seed else ["runs"]), *(["memory source"] if mixed else [])],
        keys=keys,
        columns=shown,
        headers=[c.header.format(unit=unit, source=source) for c in shown],
        cells=[[_cell(row, c, c.scale or unit_bytes) for c in shown] for row in rows],
    )


def _text(table: Table, tablefmt: str) -> str:
    rows = [
        key + [cell.text(c.decimals) for c, cell in zip(table.columns, cells, strict=True)]
        for key, cells in zip(table.keys, table.cells, strict=True)
    ]
    align = ["left"] * len(table.key_headers) + ["right"] * len(table.columns)
    return tabulate(rows, headers=table.key_headers + table.headers, tablefmt=tablefmt, colalign=align, disable_numparse=True)


_TEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "\\": r"\textbackslash{}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "→": r"$\to$",
}


def _tex(text: str) -> str:
    """``text`` as LaTeX prints it verbatim (with only the packages every template has)."""
    return re.sub(r"[&%$#_{}\\~^±→]", lambda m: _TEX_SPECIAL[m.group()], text)


def ranked(means: dict[int, float | None], decimals: int, lower_is_better: bool) -> list[set[int]]:
    """The rows of a column, keyed by row index, best first: a set per displayed value
    (means compared as shown at ``decimals``, so ties share a rank); rows without a mean
    are left out."""
    shown = {i: round(mean, decimals) for i, mean in means.items() if mean is not None}
    order = sorted(set(shown.values()), reverse=not lower_is_better)
    return [{i for i, v in shown.items() if v == value} for value in order]


def _best(table: Table, index: int) -> set[int]:
    """Rows holding the best mean of a column, compared as displayed (ties share it)."""
    column = table.columns[index]
    if not column.ranked:
        return set()
    ranks = ranked({i: cells[index].mean for i, cells in enumerate(table.cells)}, column.decimals, column.lower_is_better)
    return ranks[0] if ranks else set()


def _latex(table: Table) -> str:
    """booktabs: units in the header, the best value of each column in bold."""
    best = [_best(table, j) for j in range(len(table.columns))]
    lines = [
        f"% {table.title}",
        r"\begin{tabular}{" + "l" * len(table.key_headers) + "r" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(_tex(h) for h in table.key_headers + table.headers) + r" \\",
        r"\midrule",
    ]
    for i, (key, cells) in enumerate(zip(table.keys, table.cells, strict=True)):
        shown = [cell.text(c.decimals, pm=r" $\pm$ ") for c, cell in zip(table.columns, cells, strict=True)]
        shown = [rf"\textbf{{{s}}}" if i in best[j] else s for j, s in enumerate(shown)]
        lines.append(" & ".join([*(_tex(k) for k in key), *shown]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _csv(table: Table) -> str:
    """Numbers in the displayed units at full precision, the spread in a "… std" column."""
    with_std = not table.per_run
    headers = list(table.key_headers)
    for header in table.headers:
        headers += [header, f"{header} std"] if with_std else [header]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    for key, cells in zip(table.keys, table.cells, strict=True):
        numbers = [[c.label if c.mean is None else c.mean, *([c.std] if with_std else [])] for c in cells]
        writer.writerow(key + [x for pair in numbers for x in pair])
    return out.getvalue().rstrip("\n")


def budget_table(records: list[dict], fmt: str = "md") -> str | None:
    """The primary metric (mean over seeds) and the chosen batch of every variant under
    each budget of one budget family (`budget_families`), a column per budget; None
    without such a family."""
    parts = []
    for family in budget_families(records).values():
        metric = primary_metric(family)
        budgets = sorted({r["budget"]["bytes"] for r in family})
        cells = {(at.variant, at.key[1]): at for at in group(family, ("variant", "budget_bytes"))}
        rows = []
        for variant in dict.fromkeys(v for v, _ in cells):
            row = [variant]
            for nbytes in budgets:
                if (at := cells.get((variant, nbytes))) is None:
                    row.append("-")
                elif stats := at.stats(PRIMARY):
                    row.append(f"{stats[0]:.1f} (batch {at.ok[0]['budget']['batch_size']})")
                else:
                    row.append(at.failure_label())
            rows.append(row)
        headers = ["variant", *(f"{metric.label} at {size_label(b)}" for b in budgets)]
        table = tabulate(
            rows, headers=headers, tablefmt={"md": "github", "latex": "latex_booktabs", "csv": "tsv"}[fmt], disable_numparse=True
        )
        schedule = family[0]["budget"]["schedule"]
        parts.append(f"{metric.label} against the memory budget ({schedule}; the chosen training batch in brackets)\n\n{table}")
    return "\n\n".join(parts) or None


def suites_table(records: list[dict], fmt: str = "md") -> str | None:
    """Every variant's primary metric (mean ± std over seeds) on each suite of one task the
    records without a budget span (`suite_names`), a column per suite, beside its trainable
    parameters and train peak (one column when every suite measured the same peak, as
    suites that differ only in their data do; else one per suite); None for fewer than two
    suites of a task."""
    tables = [table for rs in by_task(records).values() if (table := _suites_table(rs, fmt))]
    return "\n\n".join(tables) or None


def _suites_table(records: list[dict], fmt: str) -> str | None:
    split = by_suite([r for r in records if r.get("budget") is None])
    if len(split) < 2 or (names := suite_names(split)) is None:
        return None
    metric = primary_metric(records)
    rows = {h: {row.variant: row for row in group(rs, ("variant",))} for h, rs in split.items()}
    variants = sorted({v for per in rows.values() for v in per})
    unit, unit_bytes = memory_unit(value(r, "train_peak_bytes") for r in records)

    def cell(row: Group | None, figure: str, scale: float, decimals: int) -> str:
        if row is None:
            return "-"
        return _cell(row, Column(figure, "", decimals, False), scale).text(decimals)

    peaks = {v: {cell(rows[h].get(v), "train_peak_bytes", unit_bytes, 2) for h in split} - {"-"} for v in variants}
    same = all(len(p) <= 1 for p in peaks.values())
    peak_headers = [f"train peak ({unit}, every suite)"] if same else [f"train peak ({unit}), {n}" for n in names]
    table = []
    for v in variants:
        first = next(rows[h][v] for h in split if v in rows[h])
        peak = [next(iter(peaks[v]), "-")] if same else [cell(rows[h].get(v), "train_peak_bytes", unit_bytes, 2) for h in split]
        table.append([v, cell(first, "params_trainable", 1e6, 3), *peak, *(cell(rows[h].get(v), PRIMARY, 1, 1) for h in split)])
    headers = ["variant", "trainable (M)", *peak_headers, *(f"{metric.label}, {n}" for n in names)]
    text = tabulate(table, headers=headers, tablefmt={"md": "github", "latex": "latex_booktabs", "csv": "tsv"}[fmt], disable_numparse=True)
    return f"{metric.label} on each suite ({source_label(records)} memory; mean ± std over seeds where there are several)\n\n{text}"


def report(records: list[dict], fmt: str = "md", by: str = "variant") -> str:
    """Every table of ``records``, one per suite configuration, with the reason when
    there is more than one; records of several budgets also get the table of the primary
    metric against the budget, and records of several suites of a task the table of it on
    each (in Markdown)."""
    split = by_suite(records)
    note = split_note(split)
    comment = {"md": "", "latex": "% ", "csv": "# "}[fmt]
    parts = []
    for suite_records in split.values():
        table = build(suite_records, by)
        if fmt == "md":
            parts.append(f"### {table.title}\n\n{_text(table, 'github')}")
        elif fmt == "latex":
            parts.append(_latex(table))
        else:  # a lone CSV table stays plain CSV
            parts.append(f"# {table.title}\n{_csv(table)}" if note else _csv(table))
    overviews = [table for table in (budget_table(records), suites_table(records)) if table] if fmt == "md" else []
    return "\n\n".join(overviews + ([comment + note] if note else []) + parts) + "\n"


def summary_table(records: list[dict]) -> str:
    """The short per-run table `petlbench run` prints when a sweep ends."""
    return "\n\n".join(_text(build(rs, "variant,seed", SUMMARY_COLUMNS), "simple") for rs in by_suite(records).values())
