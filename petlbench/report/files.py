"""A sweep folder's own report: `report.md` and the plots written next to its records, by
`run` when a sweep ends and by the report job of `run --launcher slurm`."""

from __future__ import annotations

from pathlib import Path

from petlbench.records import read_folders, write_text_atomic
from petlbench.report.plots import write_plots
from petlbench.report.tables import report


def write_report(folder: Path, sweeps: list[Path] | None = None) -> None:
    """A finished sweep's report (Markdown) and plots, next to its records; with
    ``sweeps`` (the budgets' subfolders), the report of them all in their parent ``folder``."""
    found = read_folders(sweeps or [folder])
    write_text_atomic(folder / "report.md", report(found))
    plots = write_plots(found, folder, per_suite=sweeps is None)  # each budget's own figures are in its subfolder
    print(f"report and plots in {folder}: " + ", ".join(["report.md", *(p.name for p in plots)]))
