"""Tables, plots and comparisons, built from result records only (never from live objects).

What every view shares lives here, once: how a figure is read from a record (a metric
included: the task of the records names them, `task_of`), the memory unit of a column,
how statuses and memory sources are named, how seeds are grouped, and the split by
`suite_hash` (records share a table, a figure or a comparison only when their resolved
suites are equal, and so their task).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from petlbench import config as cfgmod
from petlbench.config import DEFAULT_TASK, ConfigError, SuiteConfig
from petlbench.methods import registered
from petlbench.registry import GROUPS
from petlbench.results import frame, value
from petlbench.schema import STATUSES
from petlbench.tasks import Metric, TaskSpec, get_task
from petlbench.units import size_label

if TYPE_CHECKING:  # pandas (and numpy) load when a frame is built: `list` and `--help` stay light
    import pandas as pd

# The widths a paper sets tables and figures at, in inches: one column and the whole text
# (`report --style paper --width`, `plot --width`).
WIDTHS = {"column": 3.3, "text": 6.9}

STATUS_LABELS = {**{status: status for status in STATUSES}, "oom": "OOM", "over_budget": "over budget"}
SOURCE_LABELS = {"cuda": "CUDA", "cpu-accounting": "CPU accounting", "estimate": "estimate"}


def task_of(record: dict) -> TaskSpec:
    """The task ``record`` ran: the one its metrics name, or (an estimate, a failed run) its
    suite's. A task this version does not know is described by the record alone: its
    metrics, each higher-is-better, under their own names."""
    metrics = record.get("metrics")
    name = metrics["task"] if metrics else record["config"]["suite"].get("task", DEFAULT_TASK)
    try:
        return get_task(name)
    except ConfigError:
        names = list(metrics["values"]) if metrics else ["-"]
        primary = metrics["primary"] if metrics else "-"
        return TaskSpec(name, name, tuple(Metric(n, n) for n in names), primary, module="")


def primary_metric(records: list[dict]) -> Metric:
    """The primary metric of ``records`` (of one task)."""
    return task_of(records[0]).primary_metric


def by_task(records: list[dict]) -> dict[str, list[dict]]:
    """Records split by their task, in order of first appearance: reports, plots and
    comparisons never put two tasks' metrics side by side."""
    split: dict[str, list[dict]] = {}
    for r in records:
        split.setdefault(task_of(r).name, []).append(r)
    return split


def method_name(method: str) -> str:
    """A method as papers name it ("Full fine-tuning"; `MethodSpec.display`); the registry
    name for a method this version does not know (older records)."""
    spec = registered().get(method)
    return spec.display if spec else method


def method_group(method: str) -> str:
    """The kind of method (a key of `GROUPS`, "other" for an unknown method)."""
    spec = registered().get(method)
    return spec.group if spec else "other"


GROUP_TITLES = {**GROUPS, "other": "Other"}


def variant_name(record: dict) -> str:
    """The variant as a paper names it: its method's name, followed, where the variant's
    settings are not its method's defaults, by what differs ("Adapter (Pfeiffer)",
    "Partial fine-tuning (k=2)"); the learning rate, tuned per variant, is not a setting."""
    method = record["run"]["method"]
    spec = registered().get(method)
    if spec is None:
        return record["run"]["variant"]
    chosen = record["config"]["method"]
    differs = []
    for f in dataclasses.fields(spec.config_cls):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if f.name != "lr" and f.name in chosen and chosen[f.name] != default:
            shown = chosen[f.name]
            differs.append(shown.capitalize() if isinstance(shown, str) else f"{f.name}={shown}")
    return f"{spec.display} ({', '.join(differs)})" if differs else spec.display


def status_label(status: str) -> str:
    """How a status shows in tables: a failed run is a label, never a zero."""
    return STATUS_LABELS.get(status, status)


def sources(records: Iterable[dict]) -> list[str]:
    """The memory sources (`cuda`, `cpu-accounting`, `estimate`) behind ``records``."""
    return sorted({s for r in records if (s := value(r, "memory_source"))})


def source_label(records: Iterable[dict]) -> str:
    """The memory sources of ``records``, named for a header ("CPU accounting")."""
    return "/".join(SOURCE_LABELS.get(s, s) for s in sources(records)) or "-"


@dataclass
class Group:
    """The records behind one row or one point: one variant (and seed, memory source or
    budget), with their rows of the records' `petlbench.results.frame`."""

    key: tuple
    records: list[dict]
    rows: pd.DataFrame

    @property
    def variant(self) -> str:
        return self.records[0]["run"]["variant"]

    @property
    def method(self) -> str:
        return self.records[0]["run"]["method"]

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r["run"]["status"] == "ok"]

    def failure_label(self) -> str:
        """What the row shows where no run succeeded, e.g. "OOM" or "OOM/error"."""
        return "/".join(dict.fromkeys(status_label(r["run"]["status"]) for r in self.records if r["run"]["status"] != "ok"))

    def status_counts(self) -> str:
        """E.g. "3 ok" or "2 ok, 1 diverged": how many seeds a mean stands on."""
        counts = Counter(r["run"]["status"] for r in self.records)
        return ", ".join(f"{n} {status_label(s)}" for s, n in sorted(counts.items(), key=lambda kv: kv[0] != "ok"))

    def stats(self, figure: str, scale: float = 1) -> tuple[float, float | None, int] | None:
        """Mean, sample standard deviation (None for a single seed) and count of the
        column ``figure`` over the successful runs, divided by ``scale``; None where none
        recorded it. `statistics` reduces, not pandas: its mean is exactly rounded and its
        spread of equal values exactly zero (pandas' float sums leave 1e-16, which a table
        would show as "± 0.00")."""
        if figure not in self.rows:
            return None
        values = self.rows.loc[self.rows["status"] == "ok", figure].dropna().astype(float) / scale
        if values.empty:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def group(records: list[dict], by: tuple[str, ...]) -> list[Group]:
    """Records grouped by columns of their frame (``variant``, ``seed``, ``budget_bytes``)
    in the order of their keys; when the records mix memory sources, the source is part of
    the key, so that a mean never mixes a CUDA figure with a CPU one."""
    table = frame(records)
    keys = [*by, *(["memory_source"] if len(sources(records)) > 1 else [])]
    table[keys] = table[keys].fillna("")
    return [Group(key, [records[i] for i in rows.index], rows) for key, rows in table.groupby(keys, sort=True)]


def by_suite(records: list[dict]) -> dict[str, list[dict]]:
    """Records split by `suite_hash`, in order of first appearance."""
    split: dict[str, list[dict]] = {}
    for r in records:
        split.setdefault(r["run"]["suite_hash"], []).append(r)
    return split


def suite_names(split: dict[str, list[dict]]) -> list[str] | None:
    """The suite name of each configuration of `by_suite`'s split when each is another
    suite; None when two share a name (configurations of one suite are reported apart,
    with their differences, never side by side)."""
    names = [rs[0]["run"]["suite"] for rs in split.values()]
    return names if len(set(names)) == len(names) else None


def split_note(split: dict[str, list[dict]]) -> str | None:
    """One sentence saying why the records are reported apart, or None when they are not."""
    if len(split) < 2:
        return None
    hashes = ", ".join(split)
    why = cfgmod.suite_differences(rs[0]["config"]["suite"] for rs in split.values())
    return f"These records come from {len(split)} different suite configurations (suite_hash {hashes}) and are reported separately: they differ in {why}."


def suite_title(records: list[dict]) -> str:
    run, budget = records[0]["run"], records[0].get("budget")
    title = f"{run['suite']} v{run['suite_version']} (suite_hash {run['suite_hash']})"
    if budget is None:
        return title
    train = records[0]["config"]["suite"]["train"]
    schedule = (
        f"equal_samples: about {train['steps'] * train['batch_size']:,} training samples for every method"
        if budget["schedule"] == "equal_samples"
        else f"equal_steps: {train['steps']} steps at every batch size, so a larger batch sees more samples"
    )
    return f"{title}, budget {size_label(budget['bytes'])} ({schedule}; learning-rate scaling {budget['lr_scaling']})"


def _budget_family(suite: dict) -> str:
    """What the records of one budget family share: the hash of their suite with the
    budget's size made equal (one byte), so that, as for `config.suite_hash`, a setting
    added after some records were written counts only where it is not at its default. A
    suite this version cannot read shares a family only with suites equal to it."""
    try:
        resolved = cfgmod.build(SuiteConfig, suite, "a record's config.suite")
    except ConfigError:
        return json.dumps(
            {**suite, "budget": {**suite.get("budget", {}), "bytes": None}, "seeds": None, "description": None}, sort_keys=True, default=str
        )
    return cfgmod.suite_hash(dataclasses.replace(resolved, budget=dataclasses.replace(resolved.budget, bytes=1)))


def budget_families(records: list[dict]) -> dict[str, list[dict]]:
    """Records run under a budget, split by their suite configuration less the budget's
    size (`_budget_family`): each family is one curve of rSum against the budget."""
    families: dict[str, list[dict]] = {}
    for r in records:
        if r.get("budget") is not None:
            families.setdefault(_budget_family(r["config"]["suite"]), []).append(r)
    return {key: rs for key, rs in families.items() if len({r["budget"]["bytes"] for r in rs}) > 1}
