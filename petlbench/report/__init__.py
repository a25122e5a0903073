"""Tables (and later plots and comparisons) built from result records only."""

from __future__ import annotations

from tabulate import tabulate

GIB, MIB = 2**30, 2**20


def memory_unit(values: list[int | None]) -> tuple[str, int]:
    """MiB when every figure is under 1 GiB, else GiB (measurement.md: one unit per column)."""
    present = [v for v in values if v is not None]
    return ("MiB", MIB) if all(v < GIB for v in present) else ("GiB", GIB)


def summary_table(records: list[dict]) -> str:
    """One row per record: variant, seed, status, trainable params, train peak, rSum."""
    peaks = [r["cost"].get("memory", {}).get("train_peak_bytes") if r.get("cost") else None for r in records]
    unit, div = memory_unit(peaks)
    sources = sorted({r["cost"]["memory"]["source"] for r in records if r.get("cost")})
    rows = []
    for r, peak in zip(records, peaks, strict=True):
        ok = r["run"]["status"] == "ok"
        cost = r.get("cost") or {}
        rows.append(
            [
                r["run"]["variant"],
                r["run"]["seed"],
                r["run"]["status"],
                f"{cost['params_trainable']:,}" if "params_trainable" in cost else "-",
                f"{peak / div:.2f}" if ok and peak is not None else r["run"]["status"].upper(),
                f"{r['metrics']['rsum']:.1f}" if ok else "-",
            ]
        )
    headers = ["variant", "seed", "status", "trainable params", f"train peak ({unit}, {'/'.join(sources) or '-'})", "rSum"]
    return tabulate(rows, headers=headers, colalign=("left", "right", "left", "right", "right", "right"))
