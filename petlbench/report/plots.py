"""Figures for a paper at its column (3.3 in) or text width (6.9 in), PNG and PDF: memory
vs the task's primary metric (the score: rSum for retrieval) with the Pareto frontier,
trainable parameters vs the score, the train peak by category; for runs under several
memory budgets, the score against the budget; for runs of several suites of a task, memory
vs the score a panel per suite. Files are named after the metric (``memory_vs_rsum.png``).
Text is at least 7 pt at that size, methods and variants go by their display names, and
PDFs embed TrueType fonts.

Each variant keeps one colour and marker in every figure of a report (`variant_styles`),
and a label lies where it covers no other label and no marker (`place_labels`). Figures use matplotlib's object API (no
pyplot), so plotting needs no display and leaves no global state behind.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

from petlbench import faults
from petlbench.methods import registered
from petlbench.records import write_file_atomic
from petlbench.report import (
    WIDTHS,
    Group,
    budget_families,
    by_suite,
    by_task,
    group,
    primary_metric,
    source_label,
    suite_names,
    variant_name,
)
from petlbench.results import BREAKDOWN, PRIMARY, value
from petlbench.tasks import Metric
from petlbench.units import MiB, memory_unit, size_label

FONT_PT = 7  # the smallest text in a figure, at its printed size
STYLE = {
    "font.size": FONT_PT,
    "axes.labelsize": FONT_PT,
    "axes.titlesize": FONT_PT,
    "legend.fontsize": FONT_PT,
    "xtick.labelsize": FONT_PT,
    "ytick.labelsize": FONT_PT,
    "figure.titlesize": FONT_PT,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # TrueType: text stays text, as publishers ask
}
# 20 colours and 9 markers, both stepped per variant: (colour, marker) pairs stay distinct for 180 variants.
COLOURS = mpl.colormaps["tab10"].colors + mpl.colormaps["tab20"].colors[1::2]  # the ten, then their lighter shades
MARKERS = "osD^vP*Xh"
TICK_LABEL_CHARACTERS = 24  # a line of a name under a bar (wrapped at spaces)
MAX_AREA_PT2 = 400  # halo area of the variant with the most trainable parameters


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, score) that no other point dominates — one with no
    higher cost and no lower score, better in at least one — sorted by cost. Equal
    points do not dominate each other, so both stay."""

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and a != b

    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i])


class Style(NamedTuple):
    colour: tuple[float, float, float]
    marker: str
    label: str  # the variant's display name (`variant_name`)


def variant_styles(records: list[dict]) -> dict[str, Style]:
    """One colour, marker and name per variant of ``records``, the same in every figure of
    a report: variants in the order of their method among the registered methods
    (unregistered names, from older records, follow in name order), then by name; 20
    colours before one repeats, and the marker changes with every variant, so that no two
    variants of a report look alike."""
    order = sorted(registered())
    first = {r["run"]["variant"]: r for r in records}
    methods = order + sorted({r["run"]["method"] for r in first.values()} - set(order))
    variants = sorted(first, key=lambda v: (methods.index(first[v]["run"]["method"]), v))
    return {v: Style(COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)], variant_name(first[v])) for i, v in enumerate(variants)}


def _legend(fig: Figure, styles: dict[str, Style], variants: Sequence[str], width: float) -> None:
    """The legend of ``variants``, under their display names, below the axes, in as many
    columns as the width holds."""
    handles = [
        Line2D([], [], ls="", marker=styles[v].marker, markersize=4, color=styles[v].colour, label=styles[v].label)
        for v in sorted(dict.fromkeys(variants), key=list(styles).index)
    ]
    _fitting_legend(fig, handles, min(len(handles), _columns(width)), handletextpad=0.2)


def _fitting_legend(fig: Figure, handles: list, columns: int, **options: float) -> None:
    """A legend below the axes in at most ``columns`` columns, fewer where long names would
    make it wider than the figure; a legend taller than a third of the figure makes the
    figure taller by the excess, so that the axes keep their room (many variants in a column)."""
    legend = _fit_columns(
        fig, columns, lambda ncol: fig.legend(handles=handles, ncol=ncol, loc="outside lower center", frameon=False, **options)
    )
    height = legend.get_window_extent(FigureCanvasAgg(fig).get_renderer()).height / fig.dpi
    if (excess := height - fig.get_figheight() / 3) > 0:
        fig.set_figheight(fig.get_figheight() + excess)


def _fit_columns(fig: Figure, columns: int, place) -> Legend:
    """``place(ncol)`` (it draws a legend in ``ncol`` columns) with the most columns up to
    ``columns`` whose legend is no wider than the figure; that legend."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ncol in range(columns, 1, -1):
        legend = place(ncol)
        if legend.get_window_extent(renderer).width <= fig.bbox.width:
            return legend
        legend.remove()
    return place(1)


# What a place costs `place_labels` beyond its overlaps: outside the axes, off the figure.
OUTSIDE_AXES, OFF_FIGURE = 100, 10_000


def place_labels(fig: Figure, labels: dict, marker_pt: float = 4.0) -> None:
    """Annotate each axes' points ``labels[ax]`` = [(x, y, text[, colour])] so that no label
    overlaps another, nor a marker of the axes, nor leaves the axes: each label takes the
    first free place around its point, nearest first, with a leader line where it lands
    away from the point (the layout is fixed first, so that places are measured where
    they will be drawn; where no place is free, the one overlapping least, and never off
    the figure where a place on it exists). A label that fits nowhere on the figure in
    one line is tried in two, its options under its name."""
    if not labels:
        return
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    fig.set_layout_engine("none")  # the axes keep the places the layout gave them
    pad = fig.dpi / 72  # one point, in pixels
    # sixteen directions, the diagonals first; a label lies on the far side of its anchor
    angles = [45, 315, 135, 225, 0, 180, 90, 270, *range(22, 360, 45)]
    directions = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in angles]
    side = lambda c: 1 if c > 0.38 else -1 if c < -0.38 else 0  # noqa: E731

    def within(outer: Bbox, box: Bbox) -> bool:
        return outer.containsx(box.x0) and outer.containsx(box.x1) and outer.containsy(box.y0) and outer.containsy(box.y1)

    def least_clashing(note, frame: Bbox, obstacles: list[Bbox]) -> tuple:
        """(clashes, offset, ha, va, box) of the best place for ``note`` in the axes ``frame``."""
        best = None
        for distance in (3, 6, 10, 15, 21, 28, 36, 45, 55, 66, 78):
            for dx, dy in directions:
                note.set(
                    position=(dx * distance, dy * distance),
                    ha={1: "left", -1: "right", 0: "center"}[side(dx)],
                    va={1: "bottom", -1: "top", 0: "center"}[side(dy)],
                )
                box = note.get_window_extent(renderer).padded(pad)
                clashes = sum(box.overlaps(o) for o in obstacles)
                clashes += (0 if within(frame, box) else OUTSIDE_AXES) + (0 if within(fig.bbox, box) else OFF_FIGURE)
                if best is None or clashes < best[0]:
                    best = (clashes, (dx * distance, dy * distance), note.get_ha(), note.get_va(), box)
                if not clashes:
                    return best
        return best

    for ax, wanted in labels.items():
        frame = ax.get_window_extent(renderer)
        half = marker_pt / 2 * pad
        markers = [
            Bbox.from_extents(px - half, py - half, px + half, py + half)
            for c in ax.collections
            for px, py in c.get_offset_transform().transform(c.get_offsets())
        ]
        taken: list[Bbox] = []
        for x, y, text, *colour in wanted:
            best = None
            for lines in dict.fromkeys([text, text.replace(" (", "\n(", 1)]):
                note = ax.annotate(lines, (x, y), xytext=(0, 0), textcoords="offset points", in_layout=False, color=(colour or [None])[0])
                found = least_clashing(note, frame, markers + taken)
                note.remove()  # drawn anew where it fits, tied back by a line where it is far from its point
                if best is None or found[0] < best[0]:
                    best = (*found, lines)
                if found[0] < OFF_FIGURE:
                    break
            _, offset, ha, va, box, text = best
            far = max(map(abs, offset)) > 6
            line = {"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 0, "shrinkB": 2} if far else None
            ax.annotate(
                text,
                (x, y),
                xytext=offset,
                textcoords="offset points",
                ha=ha,
                va=va,
                color=(colour or [None])[0],
                in_layout=False,
                arrowprops=line,
            )
            taken.append(box)


def _columns(width: float) -> int:
    """Legend columns of display names at 7 pt (about 1.1 in each) across ``width`` inches."""
    return max(1, int(width // 1.1))


def _scatter(ax, rows: list[Group], xs: list[float], styles: dict, areas: list[float] | None = None) -> list[float]:
    """One point per variant at (x, mean score), with the seed spread as an error bar.
    ``areas`` (pt²) are drawn as translucent halos behind the fixed-size markers, so that
    a variant with very few parameters stays visible."""
    ys = []
    for i, (row, x) in enumerate(zip(rows, xs, strict=True)):
        colour, marker, _ = styles[row.variant]
        y, std, _ = row.stats(PRIMARY)
        if areas:
            ax.scatter([x], [y], s=areas[i], color=colour, marker=marker, alpha=0.3, linewidths=0, zorder=2)
        ax.scatter([x], [y], s=14, color=colour, marker=marker, linewidths=0, zorder=3)
        if std:
            ax.errorbar([x], [y], yerr=[std], fmt="none", ecolor=colour, elinewidth=0.6, capsize=1.5, zorder=2)
        ys.append(y)
    return ys


def _memory_panel(ax, rows: list[Group], metric: Metric, styles: dict, unit: tuple[str, int], source: str) -> list[tuple]:
    """Train peak memory vs the score ``metric``; marker area proportional to trainable
    parameters; the Pareto frontier (lower memory, better score) drawn. Its members are
    to be named: their labels (x, y, name) are returned for `place_labels`."""
    xs = [row.stats("train_peak_bytes", unit[1])[0] for row in rows]
    params = [row.stats("params_trainable")[0] for row in rows]
    ys = _scatter(ax, rows, xs, styles, areas=[MAX_AREA_PT2 * p / (max(params) or 1) for p in params])
    sign = 1 if metric.higher_is_better else -1
    front = pareto_front([(x, sign * y) for x, y in zip(xs, ys, strict=True)])
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.4", lw=0.8, ls="--", zorder=1)
    ax.margins(0.08)  # room for the largest halos
    ax.set_xlabel(f"train peak memory ({unit[0]}, {source})")
    ax.set_ylabel(metric.axis_label)
    return [(xs[i], ys[i], styles[rows[i].variant].label) for i in front]


def memory_vs_score(rows: list[Group], metric: Metric, styles: dict, unit: tuple[str, int], source: str, width: float) -> Figure:
    fig = Figure(figsize=(width, 3.6), layout="constrained")
    ax = fig.add_subplot()
    labels = {ax: _memory_panel(ax, rows, metric, styles, unit, source)}
    ax.set_title("shaded area ∝ trainable parameters;\ndashed: Pareto frontier")  # one line overflows a column
    _legend(fig, styles, [row.variant for row in rows], width)
    place_labels(fig, labels)
    return fig


def memory_vs_score_by_suite(
    panels: dict[str, list[Group]], metric: Metric, styles: dict, unit: tuple[str, int], source: str, width: float
) -> Figure:
    """`memory_vs_score` for several suites of a task, a panel each (titled with the suite): the same
    methods in two regimes, side by side at the text width, one above the other in a column."""
    wide = width >= WIDTHS["text"]
    fig = Figure(figsize=(width, 3.6 if wide else 2.6 * len(panels) + 0.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0] if wide else fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    labels = {}
    for ax, (title, rows) in zip(axes, panels.items(), strict=True):
        labels[ax] = _memory_panel(ax, rows, metric, styles, unit, source)
        ax.set_title(title)
    fig.suptitle("shaded area ∝ trainable parameters; dashed: Pareto frontier")
    _legend(fig, styles, [row.variant for rows in panels.values() for row in rows], width)
    place_labels(fig, labels)
    return fig


def params_vs_score(rows: list[Group], metric: Metric, styles: dict, width: float) -> Figure:
    fig = Figure(figsize=(width, 3.4), layout="constrained")
    ax = fig.add_subplot()
    _scatter(ax, rows, [row.stats("params_trainable", 1e6)[0] for row in rows], styles)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (M, log scale)")
    ax.set_ylabel(metric.axis_label)
    _legend(fig, styles, [row.variant for row in rows], width)
    return fig


def memory_breakdown(rows: list[Group], styles: dict, unit: tuple[str, int], source: str, width: float) -> Figure:
    """A stacked bar per variant: the train peak by category (mean over seeds). Where the
    categories do not add up to the peak (on CUDA only resident tensors are categorised),
    the rest is drawn as "other"."""
    breakdowns = []
    for row in rows:
        ok = row.rows[row.rows["status"] == "ok"].filter(like=BREAKDOWN).dropna(axis="columns", how="all").fillna(0)
        cats = {column.removeprefix(BREAKDOWN): share for column, share in ok.mean().items()}
        rest = row.stats("train_peak_bytes")[0] - sum(cats.values())
        breakdowns.append({**cats, **({"other": rest} if rest > 0 else {})})
    categories = list(dict.fromkeys(k for b in breakdowns for k in b))
    shades = mpl.colormaps["Blues"]([0.85 - 0.6 * i / max(len(categories) - 1, 1) for i in range(len(categories))])
    # the names under the bars, at 45 degrees, wrapped (a variant's options make them long) and
    # given the height they take, about 0.04 in a character, or constrained layout collapses the axes
    labels = [textwrap.fill(styles[row.variant].label, TICK_LABEL_CHARACTERS) for row in rows]
    longest = max(len(line) for label in labels for line in label.splitlines())
    fig = Figure(figsize=(width, max(3.2, 1.8 + 0.04 * longest)), layout="constrained")
    ax = fig.add_subplot()
    x = range(len(rows))
    bottom = [0.0] * len(rows)
    for cat, shade in zip(categories, shades, strict=True):
        heights = [b.get(cat, 0) / unit[1] for b in breakdowns]
        ax.bar(x, heights, bottom=bottom, color=shade, width=0.7, label=cat.replace("_", " "))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for i, row in enumerate(rows):  # the variant's marker on top ties each bar to the other figures
        colour, marker, _ = styles[row.variant]
        ax.scatter([i], [bottom[i]], color=colour, marker=marker, s=14, zorder=3, clip_on=False)
    ax.set_xticks(list(x), labels, rotation=45, ha="right")
    ax.set_ylabel(f"train peak memory ({unit[0]}, {source})")
    # at most three a row in a column, five at the text width, fewer where the names are long
    columns = min(len(categories), 3 if width < WIDTHS["text"] else 5)
    _fit_columns(fig, columns, lambda ncol: ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol))
    return fig


def score_vs_budget(records: list[dict], styles: dict, width: float) -> Figure:
    """The score (the primary metric, mean over seeds) against the memory budget, a line per variant: what each
    method achieves when the batch is the largest that fits. A budget a variant does not
    fit is a gap in its line; the number by each point is the chosen training batch."""
    fig = Figure(figsize=(width, 4.2 if width < WIDTHS["text"] else 3.6), layout="constrained")
    ax = fig.add_subplot()
    budgets = sorted({r["budget"]["bytes"] for r in records})
    cells = {(at.variant, at.key[1]): at for at in group(records, ("variant", "budget_bytes"))}
    variants = sorted(dict.fromkeys(v for v, _ in cells), key=list(styles).index)
    batches = []
    for variant in variants:
        colour, marker, name = styles[variant]
        xs, ys = [], []
        for nbytes in budgets:
            at = cells.get((variant, nbytes))
            stats = at.stats(PRIMARY) if at else None
            xs.append(nbytes / MiB)
            ys.append(stats[0] if stats else float("nan"))
            if stats:
                batches.append((xs[-1], ys[-1], str(at.ok[0]["budget"]["batch_size"]), colour))
        # the line's points as a scatter too, so that `place_labels` keeps the batches off them
        ax.plot(xs, ys, color=colour, lw=0.8, label=name)
        ax.scatter(xs, ys, color=colour, marker=marker, s=9, zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks([b / MiB for b in budgets], [size_label(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("memory budget (train and eval peaks within it)")
    ax.set_ylabel(primary_metric(records).axis_label)
    schedule = records[0]["budget"]["schedule"].replace("_", " ")
    ax.set_title(f"{schedule}; by each point: the training batch that fits")
    handles = [
        Line2D([], [], color=styles[v].colour, marker=styles[v].marker, markersize=3, lw=0.8, label=styles[v].label) for v in variants
    ]
    _fitting_legend(fig, handles, _columns(width), handletextpad=0.3)
    place_labels(fig, {ax: batches})
    return fig


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """``fig`` as PNG and PDF, each written whole or not at all (`write_file_atomic`)."""
    png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
    write_file_atomic(png, lambda f: fig.savefig(f, format="png", dpi=300))
    faults.inject("figure.png")
    write_file_atomic(pdf, lambda f: fig.savefig(f, format="pdf", metadata={"CreationDate": None}))  # reproducible bytes
    return [png, pdf]


def _suites_figure(split: dict[str, list[dict]], styles: dict[str, Style], width: float) -> Figure | None:
    """`memory_vs_score_by_suite` of the successful, scored variants of each suite (of one
    task), a panel per suite named after it; None unless two or more suites
    (`suite_names`) have such variants."""
    if (names := suite_names(split)) is None:
        return None
    panels = {
        title: rows
        for title, rs in zip(names, split.values(), strict=True)
        if (rows := [row for row in group(rs, ("variant",)) if row.ok and row.stats(PRIMARY) and row.stats("train_peak_bytes")])
    }
    if len(panels) < 2:
        return None
    records = [r for rs in split.values() for r in rs]
    unit = memory_unit(value(r, "train_peak_bytes") for r in records)
    return memory_vs_score_by_suite(panels, primary_metric(records), styles, unit, source_label(records), width)


def figures(records: list[dict], per_suite: bool = True, width: str = "column") -> dict[str, Figure]:
    """Every figure for the successful runs in ``records`` at ``width`` (a key of
    `WIDTHS`) by file name stem: one set per suite configuration (suffixed by its
    `suite_hash` when there are several; ``per_suite`` False: none), and the score against
    the budget for each family of budget runs. A variant has one style in all of them
    (`variant_styles`). Call it within ``mpl.rc_context(STYLE)``."""
    inches = WIDTHS[width]
    split = by_suite(records) if per_suite else {}
    styles = variant_styles(records)
    out = {}
    families = list(budget_families(records).values())
    for i, family in enumerate(families):
        out[f"{primary_metric(family).name}_vs_budget{f'-{i + 1}' if len(families) > 1 else ''}"] = score_vs_budget(family, styles, inches)
    for task_records in by_task([r for r in records if r.get("budget") is None]).values() if per_suite else ():
        if figure := _suites_figure(by_suite(task_records), styles, inches):
            out[f"memory_vs_{primary_metric(task_records).name}_by_suite"] = figure
    for suite_hash, suite_records in split.items():
        suffix = f"-{suite_hash}" if len(split) > 1 else ""
        metric = primary_metric(suite_records)
        rows = [row for row in group(suite_records, ("variant",)) if row.ok]
        unit = memory_unit(value(r, "train_peak_bytes") for r in suite_records)
        source = source_label(suite_records)
        scored = [row for row in rows if row.stats(PRIMARY) and row.stats("params_trainable")]
        if measured := [row for row in scored if row.stats("train_peak_bytes")]:
            out[f"memory_vs_{metric.name}{suffix}"] = memory_vs_score(measured, metric, styles, unit, source, inches)
        if scored:
            out[f"params_vs_{metric.name}{suffix}"] = params_vs_score(scored, metric, styles, inches)
        ok = [row.rows.loc[row.rows["status"] == "ok"].filter(like=BREAKDOWN) for row in rows]
        if broken_down := [row for row, seeds in zip(rows, ok, strict=True) if seeds.notna().any(axis="columns").all()]:
            out[f"memory_breakdown{suffix}"] = memory_breakdown(broken_down, styles, unit, source, inches)
    return out


def write_plots(records: list[dict], out: Path, per_suite: bool = True, width: str = "column") -> list[Path]:
    """Every figure of `figures`, as PNG and PDF in ``out``; the paths written."""
    with mpl.rc_context(STYLE):
        return [path for stem, figure in figures(records, per_suite, width).items() for path in _save(figure, Path(out), stem)]
