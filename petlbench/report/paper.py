"""The comparison table a paper prints (`petlbench report --style paper`): one row per
method variant under its display name, grouped by kind of method (`MethodSpec.group`),
with trainable parameters, train peak memory and the task's metrics as the task lays them
out (`TaskSpec.paper`; retrieval: image→text and text→image R@1/5/10 and rSum);
the best value of each column in bold and the second underlined; mean ± std over seeds in
one compact form; a failed run as its status. LaTeX needs only booktabs: a ``table`` (or
``table*`` for the text width) whose caption states what was run and how memory was
measured. Markdown gives the same rows for a README.

Sizes are set so that the table fits its width at a 10 pt paper's column (3.3 in) or text
width (6.9 in) with no ``\\resizebox``: the test suite compiles it and reads TeX's log.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from petlbench.report import (
    GROUP_TITLES,
    Group,
    by_suite,
    group,
    method_group,
    source_label,
    sources,
    split_note,
    task_of,
    variant_name,
)
from petlbench.report.tables import Cell, Column, _cell, _tex, metric_column, ranked
from petlbench.results import value
from petlbench.tasks import TaskSpec
from petlbench.units import memory_unit, size_label

MILLIONS = Column("params_trainable", "M", 3, True, scale=1e6)
PEAK = (Column("train_peak_bytes", "{unit}", 1, True, scale=None),)
# Per width, the cost columns as (top header, the columns under it); a top header over one
# column is written above its unit, or only below where it is its own header (rSum). At
# the text width parameters in millions and percent; at 7 pt a column (3.3 in) holds six
# columns with the seeds' spread, so it keeps the parameters in millions only (at 2.5 pt
# of column separation), and the task keeps few metrics (`TaskSpec.paper`).
COST_HEADERS = {
    "text": (("Params", (MILLIONS, Column("params_percent", "%", 2, True))), ("Memory", PEAK)),
    "column": (("Params", (MILLIONS,)), ("Mem.", PEAK)),
}
Headers = tuple[tuple[str, tuple[Column, ...]], ...]


def headers(task: TaskSpec, width: str, recorded: set[str] | None = None) -> Headers:
    """The table's columns at ``width`` under their top headers: the cost, then the task's
    metrics (of those, only the ``recorded`` ones where given: a text-to-text suite records
    the metrics of its own tasks, not of every task the task knows)."""
    metrics = (
        (title, tuple(metric_column(task.metric(name), header=below) for name, below in under if recorded is None or name in recorded))
        for title, under in task.paper_columns(width)
    )
    return COST_HEADERS[width] + tuple((title, under) for title, under in metrics if under)


@dataclass
class Row:
    name: str
    group: str
    cells: list[Cell]
    failure: str | None  # what a row without a successful run shows instead of its figures


@dataclass
class PaperTable:
    width: str  # a key of `COST_HEADERS`
    headers: Headers
    rows: list[Row]
    decimals: list[int]  # per column
    unit: str
    caption: str  # plain text, "±" and "→" included
    label: str

    @property
    def columns(self) -> list[Column]:
        """The figure columns, in order."""
        return [c for _, columns in self.headers for c in columns]


def _decimals(rows: list[Group], column: Column) -> int:
    """Parameter counts (millions, percent) get enough decimals for two significant digits
    of the smallest (the shipped model's side networks are a few thousand parameters), at
    most 3 and at least 1; the rest their column's."""
    if column.figure not in ("params_trainable", "params_percent"):
        return column.decimals
    smallest = min((s[0] for row in rows if (s := row.stats(column.figure, column.scale)) and s[0] > 0), default=1.0)
    return max(1, min(3, 1 - math.floor(math.log10(smallest))))


def _seeds_sentence(rows: list[Group]) -> str:
    counts = {row.variant: len(row.ok) for row in rows if row.ok}
    if not counts or max(counts.values()) == 1:
        return "One seed."
    if len(set(counts.values())) == 1:
        return f"Mean ± std over {next(iter(counts.values()))} seeds."
    most = max(counts.values())
    named = ", ".join(variant_name(row.ok[0]) for row in rows if counts.get(row.variant) == most)
    rest = sorted({n for n in counts.values() if n != most}, reverse=True)
    return f"Mean ± std over {most} seeds for {named}; {' or '.join(map(str, rest))} for the others."


def _caption(records: list[dict], rows: list[Group], unit: str, width: str) -> str:
    """What was run (suite, model, test split, text length, batch, steps, precision) and how
    memory was measured, from the records' resolved suite (a key an older record lacks is
    left out)."""
    suite = records[0]["config"]["suite"]
    run, budget = records[0]["run"], records[0].get("budget")
    train, data = suite.get("train", {}), suite.get("data", {})
    setup = [suite.get("model", {}).get("name")]
    task = task_of(records[0])
    if ok := next((r for r in records if r.get("metrics")), None):
        setup.append(task.describe_evaluated(ok["metrics"]["evaluated"]))
    if "text_length" in data:
        setup.append(f"text length {data['text_length']} tokens")
    if budget is not None:
        training = (
            f"the largest training batch whose peaks fit {size_label(budget['bytes'])}, per method ({budget['schedule'].replace('_', ' ')})"
        )
    else:
        training = f"training batch {train.get('batch_size', '?')}, {train.get('steps', '?')} steps"
    training += f", {train['precision']}" if "precision" in train else ""
    return (
        f"{task.display.capitalize()} on {run['suite']} v{run['suite_version']}: {', '.join(p for p in setup if p)}; {training}. "
        + (
            "Params: trainable parameters in millions. "
            if width == "column"
            else "Params: trainable parameters (millions and % of the model). "
        )
        + f"Memory: train peak in {unit} ({source_label(records)}). "
        + task.paper_note.get(width, "")
        + f"{_seeds_sentence(rows)} Best in bold, second underlined."
    )


def build(records: list[dict], label: str, width: str = "text") -> PaperTable:
    """The paper table of one suite configuration's records, with the columns of ``width``."""
    recorded = {name for r in records if r.get("metrics") for name in r["metrics"]["values"]}
    table_headers = headers(task_of(records[0]), width, recorded or None)
    columns = [c for _, under in table_headers for c in under]
    rows = group(records, ("variant",))
    unit, unit_bytes = memory_unit(value(r, "train_peak_bytes") for r in records)
    mixed = len(sources(records)) > 1
    decimals = [_decimals(rows, c) for c in columns]
    out = []
    for row in rows:
        name = variant_name(row.records[0]) + (f" ({source_label(row.records)})" if mixed else "")
        out.append(
            Row(
                name=name,
                group=method_group(row.method),
                cells=[_cell(row, c, c.scale or unit_bytes) for c in columns],
                failure=None if row.ok else row.failure_label(),
            )
        )
    order = list(GROUP_TITLES)
    out.sort(key=lambda r: (order.index(r.group), r.name))
    return PaperTable(width, table_headers, out, decimals, unit, _caption(records, rows, unit, width), label)


def ranks(table: PaperTable, index: int) -> tuple[set[int], set[int]]:
    """The rows holding the best and the second-best value of a column, compared as
    displayed (ties share a rank); none where every row shows the same value."""
    column = table.columns[index]
    order = ranked({i: row.cells[index].mean for i, row in enumerate(table.rows)}, table.decimals[index], column.lower_is_better)
    return (order[0], order[1]) if len(order) >= 2 else (set(), set())


def _number(cell: Cell, decimals: int, spread: str) -> str:
    """The mean, and the spread where it shows at these decimals."""
    out = f"{cell.mean:.{decimals}f}"
    return out + spread.format(f"{cell.std:.{decimals}f}") if cell.std and round(cell.std, decimals) else out


def _marked(table: PaperTable, bold: str, underline: str, spread: str) -> list[list[str]]:
    """Every row's cells as text, best values wrapped in ``bold``, second in ``underline``."""
    marks = [ranks(table, j) for j in range(len(table.columns))]
    shown = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, cell in enumerate(row.cells):
            text = cell.label if cell.mean is None else _number(cell, table.decimals[j], spread)
            best, second = marks[j]
            cells.append(bold.format(text) if i in best else underline.format(text) if i in second else text)
        shown.append(cells)
    return shown


def latex(table: PaperTable) -> str:
    column = table.width == "column"
    env = "table" if column else "table*"
    n = 1 + len(table.columns)
    top, rules, lower, at = [""], [], ["Method"], 2
    for title, columns in table.headers:
        if len(columns) == 1:  # its title above its unit ("Memory" over "MiB"), or only below ("rSum")
            below = columns[0].header.format(unit=table.unit)
            top.append("" if below == title else _tex(title))
            lower.append(_tex(below))
        else:
            top.append(rf"\multicolumn{{{len(columns)}}}{{c}}{{{_tex(title)}}}")
            rules.append(rf"\cmidrule(lr){{{at}-{at + len(columns) - 1}}}")
            lower += [_tex(c.header) for c in columns]
        at += len(columns)
    lines = [
        rf"\begin{{{env}}}[t]",
        r"\centering",
        r"\scriptsize" if column else r"\small",
        r"\setlength{\tabcolsep}{" + ("2.5pt" if column else "4pt") + "}",
        rf"\caption{{{_tex(table.caption)}}}",
        rf"\label{{{table.label}}}",
        r"\begin{tabular}{@{}l" + "r" * len(table.columns) + "@{}}",
        r"\toprule",
        " & ".join(top) + r" \\",
        " ".join(rules),
        " & ".join(lower) + r" \\",
    ]
    shown = _marked(table, r"\textbf{{{}}}", r"\underline{{{}}}", r"{{\tiny$\pm${}}}")
    current = None
    for row, cells in zip(table.rows, shown, strict=True):
        if row.group != current:
            current = row.group
            lines += [r"\midrule", rf"\multicolumn{{{n}}}{{@{{}}l}}{{\textit{{{GROUP_TITLES[row.group]}}}}} \\"]
        figures = [rf"\multicolumn{{{len(table.columns)}}}{{c}}{{{_tex(row.failure)}}}"] if row.failure else cells
        lines.append(" & ".join([_tex(row.name), *figures]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\end{{{env}}}"]
    return "\n".join(lines)


def markdown(table: PaperTable) -> str:
    names = ["Method"]
    for title, columns in table.headers:
        names += [c.header if c.header == title else f"{title} {c.header.format(unit=table.unit)}" for c in columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|"]
    shown = _marked(table, "**{}**", "<ins>{}</ins>", " ± {}")
    current = None
    for row, cells in zip(table.rows, shown, strict=True):
        if row.group != current:
            current = row.group
            lines.append("| " + " | ".join([f"*{GROUP_TITLES[row.group]}*", *[""] * len(table.columns)]) + " |")
        lines.append("| " + " | ".join([row.name, *cells]) + " |")  # a failed row's cells hold its status
    return f"{table.caption}\n\n" + "\n".join(lines)


def _label(records: list[dict], split: dict[str, list[dict]]) -> str:
    run = records[0]["run"]
    name = re.sub(r"[^A-Za-z0-9-]", "-", run["suite"])
    same_name = sum(rs[0]["run"]["suite"] == run["suite"] for rs in split.values()) > 1
    return f"tab:petlbench-{name}" + (f"-{run['suite_hash'][:8]}" if same_name else "")


def report(records: list[dict], fmt: str = "latex", width: str = "column") -> str:
    """The paper table of every suite configuration in ``records``: LaTeX at ``width``, or
    Markdown (every column, for a README)."""
    if fmt not in ("latex", "md"):
        raise ValueError(f"the paper style is LaTeX or Markdown, not {fmt!r}")
    split = by_suite(records)
    parts = []
    for rs in split.values():
        table = build(rs, _label(rs, split), width if fmt == "latex" else "text")
        parts.append(latex(table) if fmt == "latex" else markdown(table))
    if note := split_note(split):
        parts.insert(0, ("% " if fmt == "latex" else "") + note)
    return "\n\n".join(parts) + "\n"
