"""Tables, plots and `compare` from hand-written result records (the schema
`petlbench.sweep` writes), with expected values worked out by hand."""

from __future__ import annotations

import copy
import csv
import functools
import io
import math
import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.legend import Legend
from matplotlib.text import Text

from petlbench import config, records
from petlbench.methods import registered
from petlbench.report import WIDTHS, plots
from petlbench.report.tables import budget_table, report
from petlbench.tasks.retrieval import RECALLS
from petlbench.units import MiB
from tests.conftest import tiny_args

SUITE = {
    "name": "vl-retrieval",
    "version": 1,
    "model": {"name": "embedded-clip", "attn_implementation": "sdpa"},
    "train": {"batch_size": 64, "steps": 150},
    "seeds": [0],
    "description": "test suite",
}


def make_record(
    variant: str,
    seed: int = 0,
    *,
    method: str | None = None,
    status: str = "ok",
    suite_hash: str = "aaaa",
    steps: int = 150,
    recalls: tuple[float, ...] = (10, 20, 30, 10, 20, 30),
    params: int = 1000,
    params_total: int = 100_000,
    peak: int = 100 * MiB,
    eval_peak: int = 50 * MiB,
    step_time: float = 0.02,
    source: str = "cpu-accounting",
    torch: str = "2.13.0+cpu",
) -> dict:
    """A record with the sections and keys `petlbench.sweep` writes; a run that is not ok
    has no metrics and no cost, like a real failed run."""
    ok = status == "ok"
    names = RECALLS
    breakdown = {"parameters": 4 * params_total, "optimizer_state": 8 * params, "transient_peak": peak - 4 * params_total - 8 * params}
    return {
        "schema": records.SCHEMA,
        "run": {
            "suite": "vl-retrieval",
            "suite_version": 1,
            "suite_hash": suite_hash,
            "run_hash": f"{suite_hash}-{variant}-{seed}",
            "method": method or variant,
            "variant": variant,
            "seed": seed,
            "overrides": [],
            "status": status,
            "error": None if ok else f"{status} in a test",
            "finished": "2026-01-01T00:00:00+00:00",
        },
        "config": {"suite": {**SUITE, "train": {**SUITE["train"], "steps": steps}}, "method": {"name": method or variant, "lr": 1e-3}},
        "trainable_rule": {"head": "frozen", "temperature": "frozen"} if ok else None,
        "metrics": {
            "task": "retrieval",
            "primary": "rsum",
            "values": {**dict(zip(names, recalls, strict=True)), "rsum": sum(recalls)},
            "evaluated": {"images": 1000, "captions": 5000},
        }
        if ok
        else None,
        "cost": {
            "params_trainable": params,
            "params_total": params_total,
            "trainable_state_bytes": 4 * params,
            "memory": {
                "source": source,
                "train_peak_bytes": peak,
                "eval_peak_bytes": eval_peak,
                "train_reserved_peak_bytes": None,
                "eval_reserved_peak_bytes": None,
                "train_breakdown": breakdown,
                "measured_steps": [1, 2],
            },
            "step_time_s_median": step_time,
            "timed_steps": [3, 149],
            "train_samples_per_s": 64 / step_time,
            "eval_samples_per_s": 1000.0,
            "train_s": 3.0,
            "eval_s": 1.5,
            "wall_s": 5.0,
        }
        if ok
        else None,
        "env": {"git_commit": "0" * 40, "dirty": False, "python": "3.11.7", "torch": torch, "transformers": "5.24.0", "peft": "0.21.2"},
    }


def write(folder, recs):
    for rec in recs:
        records.write_atomic(records.record_path(folder, rec["run"]["variant"], rec["run"]["seed"]), rec)
    return folder


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Each Markdown table of a report as a list of {header: cell} rows."""
    tables = []
    for block in re.findall(r"(?:^\|.*\n?)+", text, re.M):
        lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()]
        tables.append([dict(zip(lines[0], row, strict=True)) for row in lines[2:]])
    return tables


# Suite "aaaa": linear over two seeds, full out of memory, lora ok on seed 0 and an error
# on seed 1. Suite "bbbb" (4 steps instead of 150): one run at 2 GiB.
LINEAR_0 = make_record("linear", 0, recalls=(20, 50, 60, 30, 60, 80), peak=100 * MiB, step_time=0.010)
LINEAR_1 = make_record("linear", 1, recalls=(30, 50, 70, 40, 60, 90), peak=100 * MiB, step_time=0.014)
RECORDS = [
    LINEAR_0,
    LINEAR_1,
    make_record("full", 0, status="oom"),
    make_record("lora", 0, params=2000, peak=300 * MiB),
    make_record("lora", 1, status="error"),
    make_record("linear", 0, suite_hash="bbbb", steps=4, peak=2 * 1024 * MiB),
]


def test_report_one_row_per_variant_with_mean_and_std_over_seeds():
    text = report(RECORDS)
    first, second = markdown_tables(text)
    rows = {row["variant"]: row for row in first}
    assert list(rows) == ["full", "linear", "lora"]

    linear = rows["linear"]
    # rSum 300 and 340: mean 320, sample std |340 - 300| / sqrt(2) = 28.28
    assert linear["rSum"] == "320.0 ± 28.3"
    assert linear["i2t R@1"] == "25.0 ± 7.1"  # 20 and 30
    assert linear["i2t R@5"] == "50.0"  # equal over seeds: no spread shown
    assert linear["step time (ms)"] == "12.0 ± 2.8"  # 10 and 14 ms
    assert linear["train peak (MiB, CPU accounting)"] == "100.00"
    assert linear["trainable (M)"] == "0.001" and linear["trainable (%)"] == "1.00"  # 1,000 of 100,000
    assert linear["eval peak (MiB)"] == "50.00" and linear["runs"] == "2 ok"

    # A run that failed shows its status in every figure, never a zero.
    full = rows["full"]
    assert full["runs"] == "1 OOM"
    assert {v for k, v in full.items() if k not in ("variant", "method", "runs")} == {"OOM"}
    # Mixed seeds: the figures of the successful seed, and the count says so.
    assert rows["lora"]["runs"] == "1 ok, 1 error" and rows["lora"]["rSum"] == "120.0"
    assert rows["lora"]["train peak (MiB, CPU accounting)"] == "300.00"

    # The other suite configuration has a table (and a unit) of its own, and the report says why.
    assert [row["variant"] for row in second] == ["linear"]
    assert second[0]["train peak (GiB, CPU accounting)"] == "2.00"
    assert "suite_hash aaaa, bbbb" in text and "train.steps (150 vs 4)" in text
    assert text.index("(suite_hash aaaa)") < text.index("(suite_hash bbbb)")


def test_report_by_seed_has_one_row_per_run():
    (table,) = markdown_tables(report(RECORDS[:5], by="variant,seed"))
    assert [(r["variant"], r["seed"], r["status"]) for r in table] == [
        ("full", "0", "OOM"),
        ("linear", "0", "ok"),
        ("linear", "1", "ok"),
        ("lora", "0", "ok"),
        ("lora", "1", "error"),
    ]
    assert [r["rSum"] for r in table] == ["OOM", "300.0", "340.0", "120.0", "error"]
    assert "suite_hash aaaa," not in report(RECORDS[:5])  # one configuration: no split note


def test_report_never_averages_memory_from_different_sources():
    cuda = make_record("linear", 1, source="cuda", peak=200 * MiB)
    (table,) = markdown_tables(report([LINEAR_0, cuda], by="variant"))
    assert [(r["variant"], r["runs"], r["memory source"], r["train peak (MiB)"]) for r in table] == [
        ("linear", "1 ok", "CPU accounting", "100.00"),
        ("linear", "1 ok", "CUDA", "200.00"),
    ]


def test_report_leaves_out_figures_no_run_recorded():
    estimate = make_record("lora", source="estimate")  # as `petlbench estimate --output` writes it
    estimate["metrics"] = None
    for key in ("step_time_s_median", "eval_s", "train_samples_per_s", "eval_samples_per_s", "train_s"):
        del estimate["cost"][key]
    estimate["cost"]["memory"]["eval_peak_bytes"] = None
    (table,) = markdown_tables(report([estimate]))
    assert table == [
        {
            "variant": "lora",
            "method": "lora",
            "runs": "1 ok",
            "trainable (M)": "0.001",
            "trainable (%)": "1.00",
            "train peak (MiB, estimate)": "100.00",
        }
    ]
    (failed,) = markdown_tables(report([make_record("full", status="oom")]))
    assert failed[0]["rSum"] == "OOM"  # with no successful run, every column stays for the status


def test_latex_is_booktabs_with_the_best_value_per_column_in_bold():
    recs = [
        make_record("linear", recalls=(20, 50, 60, 30, 60, 80), params=1000, peak=100 * MiB),
        make_record("lora", recalls=(40, 70, 80, 40, 70, 90), params=3000, peak=300 * MiB),
        make_record("full", status="oom"),
    ]
    text = report(recs, fmt="latex")
    lines = text.splitlines()
    assert lines[1:3] == [r"\begin{tabular}{lllrrrrrrrrrrrrr}", r"\toprule"] and lines[-2:] == [r"\bottomrule", r"\end{tabular}"]
    header = lines[3].removesuffix(r" \\").split(" & ")
    assert header[3:6] == ["trainable (M)", r"trainable (\%)", "train peak (MiB, CPU accounting)"]
    rows = {line.split(" & ")[0]: line.removesuffix(r" \\").split(" & ") for line in lines if line.endswith(r" \\")}
    rsum, peak = header.index("rSum"), header.index("train peak (MiB, CPU accounting)")
    assert rows["lora"][rsum] == r"\textbf{390.0}" and rows["linear"][rsum] == "300.0"  # higher is better
    assert rows["linear"][peak] == r"\textbf{100.00}" and rows["lora"][peak] == "300.00"  # lower is better
    assert rows["full"][rsum] == "OOM"
    t2i_r5 = header.index("t2i R@5")  # 60 vs 70: lora; equal eval peaks: both bold
    assert (rows["linear"][t2i_r5], rows["lora"][t2i_r5]) == ("60.0", r"\textbf{70.0}")
    assert rows["linear"][-2] == rows["lora"][-2] == r"\textbf{50.00}"


def test_latex_escapes_names_and_shows_spread_in_math_mode():
    text = report(
        [make_record("lora_r16", 0, method="lora"), make_record("lora_r16", 1, method="lora", recalls=(20, 20, 30, 10, 20, 30))],
        fmt="latex",
    )
    assert r"lora\_r16 & lora & 2 ok" in text
    assert r"\textbf{125.0 $\pm$ 7.1}" in text  # rSum 120 and 130


def test_csv_keeps_numbers_parseable_and_labels_failures():
    rows = list(csv.DictReader(io.StringIO(report(RECORDS[:5], fmt="csv"))))
    linear = next(r for r in rows if r["variant"] == "linear")
    assert float(linear["rSum"]) == 320 and math.isclose(float(linear["rSum std"]), 40 / math.sqrt(2))
    assert float(linear["train peak (MiB, CPU accounting)"]) == 100
    assert next(r for r in rows if r["variant"] == "full")["rSum"] == "OOM"


def test_pareto_front_against_a_hand_checked_set():
    points = [
        (1, 10),  # 0: on the front
        (2, 30),  # 1: on the front
        (2, 20),  # 2: dominated by 1 (same memory, lower rSum)
        (3, 25),  # 3: dominated by 1 (less memory, higher rSum)
        (4, 40),  # 4: on the front
        (5, 40),  # 5: dominated by 4 (more memory, same rSum)
        (0.5, 5),  # 6: on the front (least memory)
        (4, 40),  # 7: equal to 4: neither dominates the other
    ]
    assert plots.pareto_front(points) == [6, 0, 1, 4, 7]
    assert plots.pareto_front([(3, 1)]) == [0]
    assert plots.pareto_front([]) == []


def test_each_variant_has_its_own_style_in_a_report():
    """Variants of one method are told apart; the order follows the registry, then the name."""
    styles = plots.variant_styles([LINEAR_0, *RECORDS])
    assert (
        len(set((s.colour, s.marker) for s in styles.values())) == len(styles) == len({r["run"]["variant"] for r in [LINEAR_0, *RECORDS]})
    )
    assert all(s.label for s in styles.values())


def test_plot_writes_png_and_pdf(cli, tmp_path):
    write(tmp_path / "records", RECORDS[:5])
    code, out, _ = cli("plot", str(tmp_path / "records"), "--out", str(tmp_path / "figs"))
    assert code == 0
    names = {f"{stem}.{ext}" for stem in ("memory_vs_rsum", "params_vs_rsum", "memory_breakdown") for ext in ("png", "pdf")}
    assert {p.name for p in (tmp_path / "figs").iterdir()} == names
    assert all((tmp_path / "figs" / n).stat().st_size > 1000 for n in names)
    assert (tmp_path / "figs" / "memory_vs_rsum.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figs" / "memory_vs_rsum.pdf").read_bytes()[:5] == b"%PDF-"


def test_a_budget_family_joins_records_written_before_a_setting_existed():
    """Records written before `data.target`, `data.shift` and `learning_rates` existed lack
    them (at their defaults, as the suite hash reads them) and belong to the same budget
    family as those written after: the 40 MiB cell is the mean of both seeds, (120 + 124) / 2."""
    suite = config.to_dict(config.load_suite("vl-retrieval"))

    def budgeted(seed: int, nbytes: int, first_recall: float, written_before: bool) -> dict:
        rec = make_record("lora", seed, recalls=(first_recall, 20, 30, 10, 20, 30))
        rec["config"]["suite"] = copy.deepcopy({**suite, "budget": {**suite["budget"], "bytes": nbytes}})
        if written_before:
            del rec["config"]["suite"]["learning_rates"], rec["config"]["suite"]["data"]["target"], rec["config"]["suite"]["data"]["shift"]
        rec["budget"] = {"bytes": nbytes, "schedule": "equal_samples", "lr_scaling": "none", "batch_size": 16}
        return rec

    recs = [budgeted(0, 40 * MiB, 10, True), budgeted(0, 80 * MiB, 12, True), budgeted(1, 40 * MiB, 14, False)]
    (table,) = markdown_tables(budget_table(recs))
    assert table == [{"variant": "lora", "rSum at 40MiB": "122.0 (batch 16)", "rSum at 80MiB": "122.0 (batch 16)"}]
    other = budgeted(1, 40 * MiB, 14, False)
    other["config"]["suite"]["budget"]["schedule"] = "equal_steps"  # another family: alone at one budget, no curve
    (table,) = markdown_tables(budget_table([*recs[:2], other]))
    assert table[0]["rSum at 40MiB"] == "120.0 (batch 16)"


@pytest.mark.parametrize("width", ["column", "text"])
def test_every_figure_fits_its_canvas_at_a_paper_width_in_7pt_text_or_larger(monkeypatch, tmp_path, width):
    """Every legend, label and title lies inside its figure, with every registered method
    plotted and five memory categories (the breakdown's fifth, "other", included); every
    figure is the width asked for, its text at least 7 pt, its legend in display names."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem: figures.append((stem, fig)) or [])
    monkeypatch.setattr(plots, "write_plots", functools.partial(plots.write_plots, width=width))
    recs = []
    for i, name in enumerate(sorted(registered())):
        rec = make_record(name, params=1000 * (i + 1), peak=(40 + 10 * i) * MiB, recalls=(10 + i, 20, 30, 10, 20, 30))
        breakdown = rec["cost"]["memory"]["train_breakdown"]
        breakdown["gradients"] = 4 * 1000 * (i + 1)
        breakdown["transient_peak"] -= 2 * breakdown["gradients"]  # the rest is drawn as "other"
        recs.append(rec)
    plots.write_plots(recs, tmp_path)
    # and rSum against the budget, every method at two budgets
    budgeted = []
    for rec in recs:
        for nbytes in (40 * MiB, 80 * MiB):
            budget = {"bytes": nbytes, "schedule": "equal_samples", "lr_scaling": "none", "batch_size": 16}
            budgeted.append({**rec, "run": {**rec["run"], "suite_hash": f"b{nbytes}"}, "budget": budget})
    plots.write_plots(budgeted, tmp_path, per_suite=False)
    # and a panel per suite, every method on two suites
    plots.write_plots([*recs, *(_on_suite(r, "vl-retrieval-near", "cccc") for r in recs)], tmp_path)
    stems = {stem.split("-")[0] for stem, _ in figures}
    assert stems == {"memory_vs_rsum", "params_vs_rsum", "memory_breakdown", "rsum_vs_budget", "memory_vs_rsum_by_suite"}
    for stem, fig in figures:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        assert fig.get_figwidth() == WIDTHS[width], stem
        small = {(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text) if t.get_visible() and t.get_text() and t.get_fontsize() < 7}
        assert not small, f"{stem}: text under 7 pt: {sorted(small)[:5]}"
        if stem.startswith("memory_breakdown"):  # its legend names memory categories, its bars the variants
            labels = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
        else:
            labels = {t.get_text() for legend in fig.findobj(Legend) for t in legend.get_texts()}
        assert {"Full fine-tuning", "UniPT", "Linear probe"} <= labels, (stem, labels)
        drawn, canvas_box = fig.get_tightbbox(canvas.get_renderer()), fig.bbox_inches  # inches, of what is drawn
        tolerance = 0.01
        assert fig.findobj(Legend)
        assert (
            drawn.x0 >= canvas_box.x0 - tolerance
            and drawn.y0 >= canvas_box.y0 - tolerance
            and drawn.x1 <= canvas_box.x1 + tolerance
            and drawn.y1 <= canvas_box.y1 + tolerance
        ), f"{stem}: what is drawn spans {drawn.bounds} in, the canvas {canvas_box.bounds} in"


def test_pdf_figures_embed_truetype_fonts(tmp_path):
    """Publishers ask for embedded TrueType (Type 42) text, never Type 3 bitmaps."""
    write(tmp_path / "records", RECORDS[:5])
    paths = plots.write_plots(records.read_folders([tmp_path / "records"]), tmp_path / "figs")
    pdfs = [p for p in paths if p.suffix == ".pdf"]
    assert pdfs
    for pdf in pdfs:
        data = pdf.read_bytes()
        assert b"/FontFile2" in data and b"/Type3" not in data, pdf.name


def _on_suite(record: dict, suite: str, suite_hash: str, rsum_shift: float = 0.0, peak_factor: float = 1.0) -> dict:
    """``record`` as the same variant's run on another suite (its rSum and peak changed)."""
    out = copy.deepcopy(record)
    out["run"].update(suite=suite, suite_hash=suite_hash)
    if out["metrics"]:
        out["metrics"]["values"]["i2t_r1"] += rsum_shift
        out["metrics"]["values"]["rsum"] += rsum_shift
        out["cost"]["memory"]["train_peak_bytes"] = int(peak_factor * out["cost"]["memory"]["train_peak_bytes"])
    return out


def test_records_of_two_suites_get_a_table_of_rsum_on_each():
    far = [make_record("linear", 0, recalls=(10, 20, 30, 10, 20, 30)), make_record("linear", 1, recalls=(12, 20, 30, 10, 20, 30)),
           make_record("lora", 0, params=2_000_000, peak=200 * MiB)]  # fmt: skip
    near = [_on_suite(far[0], "vl-retrieval-near", "cccc", 100.0), _on_suite(far[1], "vl-retrieval-near", "cccc", 104.0)]
    (table, *_) = markdown_tables(report(far + near))
    # linear: far rSum 120 and 122 (mean 121, sample std 1.4142), near 220 and 226 (223, std 4.2426)
    assert table == [
        {"variant": "linear", "trainable (M)": "0.001", "train peak (MiB, every suite)": "100.00",
         "rSum, vl-retrieval": "121.0 ± 1.4", "rSum, vl-retrieval-near": "223.0 ± 4.2"},
        {"variant": "lora", "trainable (M)": "2.000", "train peak (MiB, every suite)": "200.00",
         "rSum, vl-retrieval": "120.0", "rSum, vl-retrieval-near": "-"},
    ]  # fmt: skip
    other = [_on_suite(far[0], "vl-retrieval-near", "cccc", 0.0, peak_factor=1.5)]
    (table, *_) = markdown_tables(report(far[:1] + other))
    assert table[0]["train peak (MiB), vl-retrieval"] == "100.00" and table[0]["train peak (MiB), vl-retrieval-near"] == "150.00"
    assert "rSum on each suite" not in report(far)


def test_plot_splits_figures_by_suite_configuration(tmp_path):
    written = plots.write_plots([LINEAR_0, RECORDS[-1]], tmp_path)
    assert {p.name for p in written} >= {"memory_vs_rsum-aaaa.png", "memory_vs_rsum-bbbb.pdf"}
    assert "memory_vs_rsum_by_suite.png" not in {p.name for p in written}  # one suite, two configurations


BASE = [make_record("linear", 0), make_record("linear", 1), make_record("lora", 0, params=2000)]


def _with(record: dict, change) -> dict:
    out = copy.deepcopy(record)
    change(out)
    return out


def _compare(cli, tmp_path, baseline, current, *options):
    write(tmp_path / "base", baseline)
    write(tmp_path / "current", current)
    return cli("compare", str(tmp_path / "base"), str(tmp_path / "current"), *options)


def _grow_peak(factor):
    return lambda r: r["cost"]["memory"].update(train_peak_bytes=int(factor * r["cost"]["memory"]["train_peak_bytes"]))


def test_compare_identical_records_pass(cli, tmp_path):
    code, out, _ = _compare(cli, tmp_path, BASE, BASE)
    assert code == 0 and "OK: 3 records compared" in out


@pytest.mark.parametrize(("factor", "expected"), [(1.05, 1), (1.015, 0)])
def test_compare_fails_on_memory_growth_past_the_tolerance(cli, tmp_path, factor, expected):
    code, out, _ = _compare(cli, tmp_path, BASE, [_with(BASE[0], _grow_peak(factor)), *BASE[1:]])
    assert code == expected
    assert f"100.00 → {100 * factor:.2f} ({factor - 1:+.2%})" in out
    assert ("FAIL: linear seed 0 (vl-retrieval): train peak (MiB) grew +5.00%" in out) == (expected == 1)


def test_compare_tolerance_is_an_option(cli, tmp_path):
    assert _compare(cli, tmp_path, BASE, [_with(BASE[0], _grow_peak(1.05)), *BASE[1:]], "--tolerance", "0.06")[0] == 0


def test_compare_fails_on_parameter_growth(cli, tmp_path):
    code, out, _ = _compare(cli, tmp_path, BASE, [*BASE[:2], _with(BASE[2], lambda r: r["cost"].update(params_trainable=2100))])
    assert code == 1 and "trainable params grew +5.00%" in out


def test_compare_fails_on_a_missing_record(cli, tmp_path):
    code, out, _ = _compare(cli, tmp_path, BASE, BASE[:2])
    assert code == 1 and "FAIL: lora seed 0 (vl-retrieval) is missing from CURRENT" in out


def test_compare_fails_when_an_ok_run_is_no_longer_ok(cli, tmp_path):
    code, out, _ = _compare(cli, tmp_path, BASE, [*BASE[:2], make_record("lora", 0, status="oom")])
    assert code == 1 and "lora seed 0 (vl-retrieval) was ok and is now OOM" in out and "ok → OOM" in out


def test_compare_checks_rsum_only_with_a_metric_tolerance(cli, tmp_path):
    worse = [make_record("linear", 0, recalls=(9, 18, 27, 9, 18, 27)), *BASE[1:]]  # rSum 120 -> 108: -10%
    assert _compare(cli, tmp_path, BASE, worse)[0] == 0
    code, out, _ = cli("compare", str(tmp_path / "base"), str(tmp_path / "current"), "--metric-tolerance", "0.05")
    assert code == 1 and "rSum dropped -10.00%" in out


def test_compare_refuses_different_suite_configurations(cli, tmp_path):
    current = [make_record(r["run"]["variant"], r["run"]["seed"], suite_hash="bbbb", steps=4) for r in BASE]
    code, out, err = _compare(cli, tmp_path, BASE, current)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "suite_hash aaaa (baseline) vs bbbb (current)" in err and "train.steps (150 vs 4)" in err


def test_compare_refuses_exact_cpu_figures_from_other_versions(cli, tmp_path):
    code, _, err = _compare(cli, tmp_path, BASE, [_with(r, lambda r: r["env"].update(torch="2.14.0+cpu")) for r in BASE])
    assert code == 2 and "torch 2.13.0+cpu vs 2.14.0+cpu" in err


def test_compare_accepts_cuda_figures_from_other_versions(cli, tmp_path):
    base = [make_record("linear", source="cuda")]
    assert _compare(cli, tmp_path, base, [make_record("linear", source="cuda", torch="2.14.0")])[0] == 0


def test_compare_refuses_cuda_figures_from_another_gpu_and_estimates_from_other_versions(cli, tmp_path):
    other_gpu = make_record("linear", source="cuda")
    other_gpu["env"]["device_name"] = "another GPU"
    code, _, err = _compare(cli, tmp_path / "gpu", [make_record("linear", source="cuda")], [other_gpu])
    assert code == 2 and "device_name" in err
    code, _, err = _compare(
        cli, tmp_path / "est", [make_record("linear", source="estimate")], [make_record("linear", source="estimate", torch="2.14.0")]
    )
    assert code == 2 and "torch" in err


@pytest.mark.parametrize(("command", "folders"), [("report", 1), ("plot", 1), ("compare", 2)])
def test_a_folder_without_records_is_a_usage_error(cli, tmp_path, command, folders):
    code, out, err = cli(command, *[str(tmp_path)] * folders)
    assert code == 2 and err == f"petlbench: error: {tmp_path}: no result records (*.json of schema 1, 2, 3)\n"


@pytest.mark.slow
def test_run_writes_the_report_and_plots_into_its_folder(cli, tmp_path):
    code, out, _ = cli("run", "--suite", "vl-retrieval", "--device", "cpu", "--methods", "linear", "--output", str(tmp_path), *tiny_args())
    assert code == 0
    (table,) = markdown_tables((tmp_path / "report.md").read_text())
    assert [(r["variant"], r["runs"]) for r in table] == [("linear", "1 ok")]
    assert all((tmp_path / f"{stem}.{ext}").stat().st_size > 0 for stem in ("memory_vs_rsum", "memory_breakdown") for ext in ("png", "pdf"))


def test_compare_refuses_a_metric_comparison_across_thread_counts(cli, tmp_path):
    baseline, current = make_record("full"), make_record("full")
    baseline["env"]["threads"], current["env"]["threads"] = 2, 1
    b, c = write(tmp_path / "b", [baseline]), write(tmp_path / "c", [current])
    assert cli("compare", str(b), str(c))[0] == 0  # memory figures do not depend on it
    code, _, err = cli("compare", str(b), str(c), "--metric-tolerance", "0.01")
    assert code == 2 and "different thread counts (2 vs 1)" in err
