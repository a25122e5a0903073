"""Regression check between two record folders: a memory or parameter figure that grew,
a run that no longer succeeds or no longer exists fails, and with a metric tolerance a
primary metric (the task's: rSum for retrieval) that got worse in its direction; records
measured under different conditions are refused rather than compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tabulate import tabulate

from petlbench import config as cfgmod
from petlbench.config import ConfigError
from petlbench.records import VERSIONED
from petlbench.report import status_label, task_of
from petlbench.results import PRIMARY, value
from petlbench.units import memory_unit

# The figures that fail a comparison when they grow past the tolerance.
GROWTH_CHECKED = ("train_peak_bytes", "eval_peak_bytes", "params_trainable")


@dataclass
class Comparison:
    """What `compare` found: the table of old and new figures and every failure."""

    table: str
    compared: int
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def text(self) -> str:
        verdict = [f"FAIL: {f}" for f in self.failures] or [f"OK: {self.compared} records compared, no regression"]
        return "\n".join([self.table, "", *self.notes, *verdict])


def _finite(figure) -> bool:
    return isinstance(figure, (int, float)) and not isinstance(figure, bool) and math.isfinite(figure)


def _key(record: dict) -> tuple[str, str, int]:
    run = record["run"]
    return run["suite"], run["variant"], run["seed"]


def _name(key: tuple[str, str, int]) -> str:
    return f"{key[1]} seed {key[2]} ({key[0]})"


def _incomparable(pairs: list[tuple[dict, dict]]) -> list[str]:
    """Why the matched records cannot be compared (empty when they can)."""
    reasons = []
    hashes = {(b["run"]["suite"], b["run"]["suite_hash"], c["run"]["suite_hash"]): (b, c) for b, c in pairs}
    for (suite, old, new), (b, c) in hashes.items():
        if old != new:
            why = cfgmod.suite_differences([b["config"]["suite"], c["config"]["suite"]])
            reasons.append(f"suite {suite}: suite_hash {old} (baseline) vs {new} (current), differing in {why}")
    for b, c in pairs:
        old, new = value(b, "memory_source"), value(c, "memory_source")
        if old and new and old != new:
            reasons.append(f"{_name(_key(b))}: memory measured by {old} (baseline) vs {new} (current)")
        elif old == new:
            # exact figures (CPU accounting, estimates) depend on the library versions; CUDA
            # figures are compared across versions (that is what a tolerance is for), but
            # not across GPU models, whose kernels and workspaces differ
            keys = ("device_name",) if old == "cuda" else VERSIONED
            changed = [f"{p} {b['env'].get(p)} vs {c['env'].get(p)}" for p in keys if b["env"].get(p) != c["env"].get(p)]
            if changed:
                reasons.append(f"{old} figures compare only between equal environments: {', '.join(changed)} (baseline vs current)")
    return list(dict.fromkeys(reasons))


def compare(baseline: list[dict], current: list[dict], tolerance: float = 0.02, metric_tolerance: float | None = None) -> Comparison:
    """Match records by (suite, variant, seed) and check each figure. Raises ConfigError
    when the two folders are not comparable."""
    suites = sorted({r["run"]["suite"] for r in baseline}), sorted({r["run"]["suite"] for r in current})
    if suites[0] != suites[1]:
        raise ConfigError(
            f"baseline and current are not comparable: they hold the suites {', '.join(suites[0])} (baseline) and {', '.join(suites[1])} (current)"
        )
    now = {_key(r): r for r in current}
    pairs = [(b, now[_key(b)]) for b in baseline if _key(b) in now]
    threads = sorted(
        {(b["env"].get("threads"), c["env"].get("threads")) for b, c in pairs if b["env"].get("threads") != c["env"].get("threads")},
        key=str,
    )
    if metric_tolerance is not None and threads:
        raise ConfigError(
            f"baseline and current ran on different thread counts ({', '.join(f'{b} vs {c}' for b, c in threads)}): accuracy "
            "depends on the reduction order, so metrics compare only at equal thread counts (`run --threads-per-run`, default 1)"
        )
    if reasons := _incomparable(pairs):
        raise ConfigError("baseline and current are not comparable: " + "; ".join(reasons))

    unit, unit_bytes = memory_unit(value(r, f) for r in baseline + current for f in GROWTH_CHECKED[:2])
    primaries = {task_of(r).primary_metric.label for r in baseline + current}
    shown = {
        "train_peak_bytes": (f"train peak ({unit})", lambda v: f"{v / unit_bytes:.2f}"),
        "eval_peak_bytes": (f"eval peak ({unit})", lambda v: f"{v / unit_bytes:.2f}"),
        "params_trainable": ("trainable params", lambda v: f"{v:,}"),
        PRIMARY: (primaries.pop() if len(primaries) == 1 else "primary metric", lambda v: f"{v:.1f}"),
    }
    failures = [f"{_name(_key(b))} is missing from CURRENT" for b in baseline if _key(b) not in now]
    rows = []
    for b, c in pairs:
        name, old_status, new_status = _name(_key(b)), b["run"]["status"], c["run"]["status"]
        if old_status == "ok" and new_status != "ok":
            failures.append(f"{name} was ok and is now {status_label(new_status)}")
        row = [
            *_key(b),
            status_label(old_status) if old_status == new_status else f"{status_label(old_status)} → {status_label(new_status)}",
        ]
        for figure, (label, fmt) in shown.items():
            old, new = value(b, figure), value(c, figure)
            if old is not None and old_status == new_status == "ok" and not _finite(new):
                failures.append(f"{name}: {label} is {new} in CURRENT, where BASELINE has {fmt(old)}")
                row.append(f"{fmt(old)} → {new}")
                continue
            if old is None or new is None or old_status != "ok" or new_status != "ok":
                row.append(fmt(old) if old is not None else "-")
                continue
            change = (new - old) / old if old else (float("inf") if new > old else 0.0)
            row.append(fmt(old) if new == old else f"{fmt(old)} → {fmt(new)} ({change:+.2%})")
            if figure in GROWTH_CHECKED and change > tolerance:
                failures.append(f"{name}: {shown[figure][0]} grew {change:+.2%} (tolerance {tolerance:.2%})")
            metric = task_of(b).primary_metric
            worse = -change if metric.higher_is_better else change
            if figure == PRIMARY and metric_tolerance is not None and worse > metric_tolerance:
                moved = "dropped" if metric.higher_is_better else "rose"
                failures.append(f"{name}: {metric.label} {moved} {change:+.2%} (tolerance {metric_tolerance:.2%})")
        rows.append(row)
    headers = ["suite", "variant", "seed", "status", *(h for h, _ in shown.values())]
    table = tabulate(rows, headers=headers, disable_numparse=True, colalign=["left"] * 4 + ["right"] * len(shown))
    new_runs = [_name(k) for k in now if k not in {_key(b) for b in baseline}]
    notes = [f"not in BASELINE (not compared): {', '.join(new_runs)}"] if new_runs else []
    return Comparison(table, len(pairs), failures, notes)
