"""The paper-style table (`report --style paper`): its structure against a hand-worked
ranking, and a real TeX engine compiling it at a paper's column and text width."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from petlbench.methods import registered
from petlbench.report import variant_name
from petlbench.report.paper import report
from tests.test_report import make_record, markdown_tables


def _record(variant: str, method: str, rsum_shift: float = 0.0, seed: int = 0, status: str = "ok", **settings) -> dict:
    """A record whose recalls are (20, 40, 60, 20, 40, 60) + ``rsum_shift``/6 each (rSum 240 + shift)."""
    step = rsum_shift / 6
    rec = make_record(variant, seed, method=method, status=status, recalls=tuple(v + step for v in (20, 40, 60, 20, 40, 60)))
    rec["config"]["method"].update(settings)
    return rec


# Full rSum 240 + 60 = 300 (best); LoRA and Adapter (Pfeiffer) 240 + 30 (second, tied);
# UniPT over two seeds: 240 and 252 (mean 246, sample std 8.485); LST out of memory.
RECORDS = [
    {**_record("full", "full", 60), "cost": {**make_record("full")["cost"], "params_trainable": 100_000}},
    _record("lora", "lora", 30),
    _record("adapter-pfeiffer", "adapter", 30, placement="pfeiffer"),
    _record("unipt", "unipt", 0, seed=0),
    _record("unipt", "unipt", 12, seed=1),
    _record("lst", "lst", status="oom"),
]


def _rows(text: str) -> list[list[str]]:
    return [line.removesuffix(r" \\").split(" & ") for line in text.splitlines() if line.endswith(r" \\")]


def test_variant_names_are_display_names_with_what_differs_from_the_defaults():
    assert variant_name(_record("adapter-pfeiffer", "adapter", placement="pfeiffer")) == "Adapter (Pfeiffer)"
    assert variant_name(_record("partial-2", "partial", k=2)) == "Partial fine-tuning (k=2)"
    assert variant_name(_record("full", "full", lr=0.5)) == "Full fine-tuning"  # the learning rate is no setting
    assert variant_name(_record("mine", "not-a-method")) == "mine"


def test_text_width_table_has_grouped_rows_two_header_levels_and_marks_the_best_two():
    text = report(RECORDS, "latex", "text")
    assert text.startswith(r"\begin{table*}[t]") and text.rstrip().endswith(r"\end{table*}")
    assert r"\begin{tabular}{@{}lrrrrrrrrrr@{}}" in text  # 11 columns
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){5-7} \cmidrule(lr){8-10}" in text
    assert r"\multicolumn{3}{c}{Image $\to$ Text}" in text and r"\multicolumn{3}{c}{Text $\to$ Image}" in text
    rows = _rows(text)
    assert rows[1] == ["Method", "M", r"\%", "MiB", "R@1", "R@5", "R@10", "R@1", "R@5", "R@10", "rSum"]
    names = [r[0] for r in rows[2:]]
    assert names == [
        r"\multicolumn{11}{@{}l}{\textit{Baselines}}",
        "Full fine-tuning",
        r"\multicolumn{11}{@{}l}{\textit{Backward through the backbone}}",
        "Adapter (Pfeiffer)",
        "LoRA",
        r"\multicolumn{11}{@{}l}{\textit{Memory-efficient}}",
        "LST",
        "UniPT",
    ]
    assert text.count(r"\midrule") == 3  # one above each group
    by_name = {r[0]: r for r in rows}
    assert by_name["Full fine-tuning"][-1] == r"\textbf{300.0}"
    assert by_name["LoRA"][-1] == by_name["Adapter (Pfeiffer)"][-1] == r"\underline{270.0}"
    assert by_name["UniPT"][-1] == r"246.0{\tiny$\pm$8.5}"
    assert by_name["LST"][1:] == [r"\multicolumn{10}{c}{OOM}"]
    # parameters: lower is better; the three 1,000-parameter variants tie at 0.001 M, full is 0.100 M
    assert by_name["LoRA"][1] == by_name["UniPT"][1] == r"\textbf{0.001}" and by_name["Full fine-tuning"][1] == r"\underline{0.100}"
    caption = re.search(r"\\caption\{(.*)\}", text).group(1)
    assert "over 2 seeds for UniPT; 1 for the others" in caption and "train peak in MiB (CPU accounting)" in caption
    assert "training batch 64, 150 steps" in caption and r"\label{tab:petlbench-vl-retrieval}" in text


def test_column_width_table_keeps_parameters_memory_r_at_1_of_each_direction_and_rsum():
    text = report(RECORDS, "latex", "column")
    assert text.startswith(r"\begin{table}[t]")
    assert r"\begin{tabular}{@{}lrrrrr@{}}" in text
    rows = _rows(text)
    assert rows[0][1:] == ["Params", "Mem.", r"\multicolumn{2}{c}{R@1}", ""]
    assert rows[1] == ["Method", "M", "MiB", r"I$\to$T", r"T$\to$I", "rSum"]


def test_markdown_paper_table_has_every_column_and_group_rows():
    (table,) = markdown_tables(report(RECORDS, "md"))
    assert [row["Method"] for row in table] == [
        "*Baselines*",
        "Full fine-tuning",
        "*Backward through the backbone*",
        "Adapter (Pfeiffer)",
        "LoRA",
        "*Memory-efficient*",
        "LST",
        "UniPT",
    ]
    unipt = table[-1]
    assert unipt["rSum"] == "246.0 ± 8.5" and table[1]["rSum"] == "**300.0**" and table[4]["rSum"] == "<ins>270.0</ins>"
    assert table[-2]["Image → Text R@1"] == "OOM"


def test_paper_style_is_latex_or_markdown(cli, tmp_path):
    from tests.test_report import write

    write(tmp_path, RECORDS)
    code, _, err = cli("report", str(tmp_path), "--style", "paper", "--format", "csv")
    assert code == 2 and "--format csv is not one of md, latex" in err
    code, out, _ = cli("report", str(tmp_path), "--style", "paper", "--format", "latex", "--width", "text")
    assert code == 0 and out.startswith(r"\begin{table*}")


def every_method(seeds: int = 3) -> list[dict]:
    """A record per registered method (its default variant) and seed, and a failed run."""
    recs = []
    for i, name in enumerate(sorted(registered())):
        for seed in range(seeds):
            rec = _record(name, name, 10 * i + seed)
            rec["cost"]["params_trainable"] = 1000 * (i + 1)
            rec["cost"]["memory"]["train_peak_bytes"] = (40 + 10 * i) * 2**20 + 12345 * seed
            recs.append(rec)
    return [*recs, _record("adapter-pfeiffer", "adapter", status="oom", placement="pfeiffer")]


MINIMAL_PAPER = r"""\documentclass[10pt,twocolumn]{article}
\usepackage{booktabs}
\setlength{\textwidth}{6.9in}
\setlength{\columnsep}{0.3in}
\setlength{\columnwidth}{3.3in}
\begin{document}
%s
\end{document}
"""


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine (pdflatex) installed: apt install texlive-latex-recommended")
@pytest.mark.parametrize("width", ["column", "text"])
@pytest.mark.slow
def test_pdflatex_compiles_the_paper_table_within_its_width(tmp_path, width):
    """Every registered method over three seeds (the widest cells) and a failed run, in a
    two-column 10 pt paper with a 3.3 in column and a 6.9 in text width: TeX compiles it
    with booktabs alone and reports no box wider than its line."""
    (tmp_path / "paper.tex").write_text(MINIMAL_PAPER % report(every_method(), "latex", width))
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert done.returncode == 0, log[-2000:]
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
