"""The plan of a sweep: the (variant, seed) grid of a suite, its shards, and every check
before the first run starts (configuration, model, weights, data through the suite's task,
seeds, output folder, manifest; with a budget, each variant's batch from the estimate)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from petlbench import budget as budgeting
from petlbench import config as cfgmod
from petlbench import folder
from petlbench.config import ConfigError, RunSettings, SuiteConfig, clip
from petlbench.methods import get_method
from petlbench.models.loader import Architecture, check_weights, load_architecture, load_preprocessors
from petlbench.registry import UnsupportedError
from petlbench.schema import Budget
from petlbench.tasks import get_task
from petlbench.train import prepare
from petlbench.units import size_label
from petlbench.variants import Variant, data_free, default_variants, load_variant, shipped


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count``, 0-based so that ``$SLURM_ARRAY_TASK_ID`` of ``--array=0-(N-1)``
    is an index as it stands. It takes the grid positions p with p % count == index: round-robin
    mixes cheap and costly variants in every part, and the split depends on the plan only, never
    on which records exist, so shards started at different times still partition the same grid."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"{self}: the number of shards N must be at least 1")
        if not 0 <= self.index < self.count:
            raise ValueError(f"{self}: expected 0 <= I < N, shards are 0-based (0/{self.count} to {self.count - 1}/{self.count})")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` as written on the command line."""
        if not (match := re.fullmatch(r"(\d+)/(\d+)", text.strip(), re.ASCII)):
            raise ValueError(f"expected I/N such as 0/4 (shard I of N, 0-based), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def select(self, grid: list[tuple[Variant, int]]) -> list[tuple[Variant, int]]:
        return grid[self.index :: self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Plan:
    suite: SuiteConfig
    variants: list[Variant]
    seeds: list[int]
    overrides: list[str]
    output: Path
    shard: Shard | None = None
    # bytes each run's CUDA caching allocator may hold (`--memory-limit`): a larger need ends the run `oom`
    memory_limit: int | None = None
    # variant name -> why its method does not apply to the suite's backbone (a record, not a run)
    unsupported: dict[str, str] = field(default_factory=dict)
    # variant name -> what the suite's memory budget decided for it (`run --budget`)
    budgets: dict[str, Budget] = field(default_factory=dict)

    def grid(self) -> list[tuple[Variant, int]]:
        """Every (variant, seed) of the sweep, in the order shards are cut from."""
        return [(v, s) for v in self.variants for s in self.seeds]

    def runs(self) -> list[tuple[Variant, int]]:
        """The (variant, seed) this process runs: the whole grid, or its shard's part."""
        return self.shard.select(self.grid()) if self.shard else self.grid()

    def settings(self, variant: Variant) -> RunSettings:
        """What ``variant``'s runs execute: the suite's settings, or its budget's."""
        choice = self.budgets.get(variant.name)
        return budgeting.settings(self.suite, choice) if choice else RunSettings.of(self.suite, variant.config.lr)


def default_output(suite: SuiteConfig) -> Path:
    """Where a sweep's records go without `--output`: ``results/<suite>/<start time>/``,
    the suite's name made a single folder name (a name such as ``../../x`` cannot steer
    the records outside ``results/``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", suite.name).strip(".-") or "suite"
    return Path("results") / name / datetime.now().strftime("%Y%m%d-%H%M%S")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def _check_data(suite: SuiteConfig) -> tuple[int, int]:
    """The suite's task checks its data (files whole, before the first run); the evaluation
    folds must split the evaluated items equally, and a training batch must fit in the
    training split. Returns the number of training and of evaluated items."""
    task = get_task(suite.task)
    n_train, n_eval = task.implementation.check_data(suite)
    if n_eval % suite.eval.folds:
        raise ConfigError(
            f"key 'eval.folds': {suite.eval.folds} folds do not split the {n_eval} {task.unit} of the {suite.eval.split} split equally"
        )
    if suite.train.batch_size > n_train:
        raise ConfigError(f"key 'train.batch_size': {suite.train.batch_size} exceeds the {n_train} {task.unit} of the training split")
    return n_train, n_eval


def _dry_prepare(architecture: Architecture, suite: SuiteConfig, variants: list[Variant]) -> dict[str, str]:
    """`train.prepare` of every variant on a ``meta`` copy of the backbone (no weights, no
    data): the checks that depend on the model (partial's k against the depth, widths that
    must divide, whole heads, LoRA targets that exist) fail here, before the first run, with
    the file and the `--set` that set the value. Returns why each unsupported variant does
    not apply (those become records, not errors, unless nothing applies)."""
    unsupported = {}
    for variant in variants:
        with torch.device("meta"):
            backbone = architecture.build(suite.model.attn_implementation)
        try:
            prepare(backbone, suite.train, data_free(variant), task=suite.task)
        except UnsupportedError as exc:
            unsupported[variant.name] = str(exc)
        except ConfigError as exc:
            where = variant.source + (f" with --set {', --set '.join(variant.overrides)}" if variant.overrides else "")
            raise ConfigError(f"{where}: {exc}") from None
    if unsupported and len(unsupported) == len(variants):
        reasons = "; ".join(f"{name}: {why}" for name, why in unsupported.items())
        raise ConfigError(f"no variant asked for applies to model {suite.model.name!r}: {reasons}")
    return unsupported


def _distinct(items: list, what: str) -> list:
    twice = sorted({str(x) for x in items if items.count(x) > 1})
    if twice:
        raise ConfigError(f"{what}: {', '.join(twice)} asked for twice (each (variant, seed) is one record)")
    return items


def make_plan(
    suite: str,
    methods: list[str] | None,
    seeds: list[int] | None,
    output: Path | None,
    overrides: list[str],
    shard: Shard | None = None,
    budget: int | None = None,
    device: torch.device | None = None,
) -> Plan:
    """Validate everything a sweep needs before any run starts: the suite and every
    variant (bounds, the model-dependent checks of a dry `prepare`), the weights, the data,
    the seeds and the output folder (writable, and holding no other sweep). With a memory
    ``budget`` (bytes; or `budget.bytes` set in the suite), each variant's batch and
    schedule are chosen from the estimate for ``device`` (`petlbench.budget`), and the
    records go to the subfolder ``budget-<size>`` of ``output``."""
    if shard is not None and output is None:
        raise ConfigError(
            f"--shard {shard}: needs --output DIR, the one folder all shards write into (the default folder is named after each process's start time)"
        )
    suite_cfg = cfgmod.load_suite(suite, overrides)
    task = get_task(suite_cfg.task, f"{cfgmod.find('suites', suite)}: key 'task'")
    if budget is not None:
        suite_cfg = dataclasses.replace(suite_cfg, budget=dataclasses.replace(suite_cfg.budget, bytes=budget))
    # with weights: a shipped architecture (config only) is an error here
    architecture = load_architecture(suite_cfg.model.name, weights=True)
    if (why := task.unserved_family(architecture.family)) is not None:
        raise ConfigError(f"{cfgmod.find('suites', suite)}: key 'model.name': {suite_cfg.model.name!r}: {why}")
    if suite_cfg.data.text_length > architecture.max_text_positions:
        raise ConfigError(
            f"key 'data.text_length': {suite_cfg.data.text_length} exceeds the {architecture.max_text_positions} text positions of {suite_cfg.model.name}"
        )
    check_weights(suite_cfg.model.name, suite_cfg.model.allow_pickle)
    load_preprocessors(suite_cfg.model.name)
    n_train, n_eval = _check_data(suite_cfg)
    names = (suite_cfg.variants or default_variants()) if methods is None else methods
    if names == ["all"]:
        names = shipped()
    if unknown := sorted(set(suite_cfg.learning_rates) - set(shipped())):
        raise ConfigError(
            f"{cfgmod.find('suites', suite)}: key 'learning_rates.{clip(unknown[0])}': not a shipped variant; known: {', '.join(shipped())}"
        )
    variants = [load_variant(name, overrides, suite_cfg.learning_rates) for name in names]
    _distinct([v.name for v in variants], "--variants")
    if seeds is None:
        seeds = suite_cfg.seeds
    _distinct(cfgmod.check_value(SuiteConfig, "seeds", seeds, "--seeds"), "--seeds")
    unsupported = _dry_prepare(architecture, suite_cfg, variants)
    for variant in variants:
        if (batch := get_method(variant.method).setup_batch(variant.config)) is not None and batch > n_train:
            raise ConfigError(
                f"{variant.source}: its set-up reads batches of {batch}, more than the {n_train} images of the training split"
            )
    output = output or default_output(suite_cfg)
    if budget is not None:
        output = output / f"budget-{size_label(budget)}"
    plan = Plan(suite_cfg, variants, list(seeds), list(overrides), output, shard, unsupported=unsupported)
    folder.check_writable(output, keep=False)
    folder.check_manifest(output, suite_cfg, plan.grid(), shard)
    if suite_cfg.budget.bytes:
        target = "cuda" if device is not None and device.type == "cuda" else "cpu"
        supported = [v for v in variants if v.name not in unsupported]
        plan.budgets = budgeting.choices(architecture, suite_cfg, supported, target, n_train, n_eval)
    return plan
