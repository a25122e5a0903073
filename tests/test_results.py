"""The record frame (`petlbench.results`) and the reports and figures built on it, checked
on the committed baselines against figures computed here from the raw JSON."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import matplotlib as mpl
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.legend import Legend
from matplotlib.text import Text

from petlbench import results
from petlbench.records import read_folders
from petlbench.report import plots
from petlbench.report.tables import report
from petlbench.units import GiB, MiB

BASELINES = Path(__file__).resolve().parents[1] / "results" / "baselines"
# every folder of records that makes one suite configuration's table
SWEEPS = sorted(p.parent for p in BASELINES.rglob("*--seed*.json"))
SWEEPS = sorted(set(SWEEPS))


def _raw(folder: Path) -> list[dict]:
    """The folder's records as JSON, read here without petlbench."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*--seed*.json"))]


def _primary(record: dict) -> float:
    """The primary metric of a schema-3 record, or rSum of a schema-2 one (its metrics at
    the top of the section)."""
    metrics = record["metrics"]
    return metrics["values"][metrics["primary"]] if "values" in metrics else metrics["rsum"]


# The CSV header of each shipped task's primary metric (its label).
PRIMARY_HEADERS = {"rsum": "rSum", "score": "score"}


def test_the_frame_holds_one_row_per_record_with_its_figures():
    folder = BASELINES / "vl-retrieval-ci"
    frame = results.load(folder)
    raw = {(r["run"]["variant"], r["run"]["seed"]): r for r in _raw(folder)}
    assert len(frame) == len(raw)
    assert {"suite", "suite_hash", "variant", "method", "seed", "status", "params_trainable", "train_peak_bytes", "memory_source"} <= set(
        frame.columns
    )
    for row in frame.itertuples(index=False):
        r = raw[(row.variant, row.seed)]
        assert row.train_peak_bytes == r["cost"]["memory"]["train_peak_bytes"]
        assert row.primary == _primary(r)
        assert frame.loc[(frame.variant == row.variant) & (frame.seed == row.seed), "metric.rsum"].item() == _primary(r)
    # a parent of sweeps stands for them; several folders make one frame
    budget = results.load(BASELINES / "vl-retrieval-budget")
    assert len(budget) == sum(len(_raw(f)) for f in SWEEPS if f.parent.name == "vl-retrieval-budget")
    assert set(budget.budget_bytes) == {44 * MiB, 128 * MiB, 1536 * MiB}
    both = results.load([BASELINES / "vl-retrieval-transfer" / "far", BASELINES / "vl-retrieval-transfer" / "near"])
    assert both.suite.nunique() == 2


@pytest.mark.parametrize("folder", SWEEPS, ids=lambda p: str(p.relative_to(BASELINES)))
def test_csv_report_is_the_mean_and_spread_over_seeds_of_the_raw_records(folder):
    """Every variant's CSV row: the primary metric (rSum, score), train peak and trainable
    parameters are the mean and sample standard deviation over its successful seeds,
    computed here from the JSON."""
    by_variant: dict[str, list[dict]] = {}
    for r in _raw(folder):
        by_variant.setdefault(r["run"]["variant"], []).append(r)
    rows = {row["variant"]: row for row in csv.DictReader(io.StringIO(report(read_folders([folder]), "csv")))}
    assert set(rows) == set(by_variant)
    peak = next(h for h in next(iter(rows.values())) if h.startswith("train peak") and not h.endswith("std"))
    primary = next(r["metrics"].get("primary", "rsum") for r in _raw(folder) if r["metrics"])
    for variant, runs in by_variant.items():
        ok = [r for r in runs if r["run"]["status"] == "ok"]
        assert rows[variant]["runs"] == f"{len(ok)} ok" if ok == runs else rows[variant]["runs"].startswith(f"{len(ok)} ok")
        for header, figure in (
            (PRIMARY_HEADERS[primary], _primary),
            (peak, lambda r: r["cost"]["memory"]["train_peak_bytes"] / (GiB if "GiB" in peak else MiB)),
            ("trainable (M)", lambda r: r["cost"]["params_trainable"] / 1e6),
        ):
            values = [figure(r) for r in ok]
            assert float(rows[variant][header]) == pytest.approx(statistics.fmean(values), rel=1e-12), (variant, header)
            spread = statistics.stdev(values) if len(values) > 1 else None
            assert (float(rows[variant][f"{header} std"]) if rows[variant][f"{header} std"] else None) == (
                pytest.approx(spread, rel=1e-12, abs=0) if spread is not None else None
            ), (variant, header)


def _figures(folder: Path, width: str) -> dict:
    with mpl.rc_context(plots.STYLE):
        figures = plots.figures(read_folders([folder]), width=width)
        for fig in figures.values():
            FigureCanvasAgg(fig).draw()
    return figures


@pytest.mark.parametrize("width", ["column", "text"])
@pytest.mark.parametrize("name", ["vl-retrieval-ci", "vl-retrieval-transfer", "vl-retrieval-budget", "glue-embedded-default"])
def test_labels_overlap_no_label_nor_marker_and_a_variant_keeps_its_style(name, width):
    """On the committed baselines, everything drawn lies inside its figure (a title as wide
    as the axes' centre allows: real figures have wider tick labels than made-up ones), no
    label of a point overlaps another label or a marker of its axes (the batch sizes of the
    budget figure included), and every variant has one colour and marker in every figure of
    the report, no two variants the same."""
    figures = _figures(BASELINES / name, width)
    assert any(stem.startswith(("memory_vs_rsum", "memory_vs_score")) for stem in figures)
    styles: dict[str, set] = {}
    for stem, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        # a second pass, as the PDF after the PNG: the budget breakdown at text width clips its
        # y label by 0.02 in on the first, until constrained layout settles its rotated ticks
        fig.canvas.draw()
        drawn, canvas = fig.get_tightbbox(renderer), fig.bbox_inches
        assert drawn.x0 >= canvas.x0 - 0.01 and drawn.x1 <= canvas.x1 + 0.01, f"{stem}: drawn {drawn.bounds} in, canvas {canvas.bounds} in"
        assert drawn.y0 >= canvas.y0 - 0.01 and drawn.y1 <= canvas.y1 + 0.01, f"{stem}: drawn {drawn.bounds} in, canvas {canvas.bounds} in"
        for ax in fig.axes:
            # the text's own box (an annotation's extent includes its leader line)
            labels = [Text.get_window_extent(t, renderer) for t in ax.texts]
            # point labels stay out of the layout (`in_layout=False`), so the drawn box above leaves them out
            off = [
                t.get_text()
                for t, box in zip(ax.texts, labels, strict=True)
                if not fig.bbox.contains(box.x0, box.y0) or not fig.bbox.contains(box.x1, box.y1)
            ]
            assert not off, f"{stem}: labels off the figure: {off}"
            markers = [
                (x, y)
                for c in ax.collections
                if isinstance(c, PathCollection) and c.get_sizes().max() <= 14
                for x, y in c.get_offset_transform().transform(c.get_offsets())
            ]
            for i, box in enumerate(labels):
                assert not any(box.overlaps(other) for other in labels[i + 1 :]), f"{stem}: {ax.texts[i].get_text()} overlaps a label"
                assert not any(box.contains(x, y) for x, y in markers), f"{stem}: {ax.texts[i].get_text()} covers a marker"
        for legend in fig.findobj(Legend):
            for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
                if hasattr(handle, "get_marker") and handle.get_marker() not in (None, "None", ""):
                    styles.setdefault(text.get_text(), set()).add((mpl.colors.to_hex(handle.get_color()), handle.get_marker()))
    assert styles
    assert all(len(seen) == 1 for seen in styles.values()), {v: s for v, s in styles.items() if len(s) > 1}
    pairs = [next(iter(s)) for s in styles.values()]
    assert len(set(pairs)) == len(pairs)
