"""Memory-budget runs (`petlbench run --budget`): for each variant, the largest training
batch whose estimated peak fits the budget, the evaluation batch that fits it too, and the
schedule and learning rate that go with that batch.

The estimate is the one `petlbench estimate` makes (`estimate.FakeTraining`): on a CPU run
it models the CPU accounting to the byte, so a measured peak above the budget is a defect;
on CUDA it models `max_memory_allocated`, and a headroom is kept for what it does not model
(the CUDA context, the caching allocator's slack). What a budget derives is kept out of the
suite (whose hash must not change with it): `train.run` executes a `RunSettings`, and the
record holds the derivation in its ``budget`` section (`schema.Budget`).
"""

from __future__ import annotations

import dataclasses
import re

from tqdm.auto import tqdm

from petlbench import config as cfgmod
from petlbench.config import BudgetConfig, ConfigError, RunSettings, SuiteConfig
from petlbench.estimate import FakeTraining, unvalidated
from petlbench.measure.estimate import Target, frozen_heap, largest_batch
from petlbench.measure.memory import PhasePeak
from petlbench.models.loader import Architecture
from petlbench.schema import Budget
from petlbench.units import parse_size, size_label
from petlbench.variants import Variant

LR_EXPONENT = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
# On the CUDA target: why a budget result is not yet trusted (docs/measurement.md, "Memory budgets").
UNCHECKED_CUDA_BUDGET = (
    "CUDA budget choices rest on the estimate of max_memory_allocated plus a headroom, neither checked on a GPU until "
    "the estimate fixture of the GPU acceptance run exists (tests/fixtures/cuda_memory*.json)"
)


def parse_budgets(text: str) -> list[int]:
    """``40MiB,80MiB,160MiB`` -> bytes, each distinct (`units.parse_size` for each)."""
    sizes = [parse_size(part) for part in re.split(r"\s*,\s*", text.strip())]
    if len(set(sizes)) < len(sizes):
        raise ValueError(f"{text!r}: a budget is named twice")
    return sizes


def schedule(suite: SuiteConfig, batch_size: int) -> tuple[int, int]:
    """(steps, warm-up steps) at ``batch_size`` under the suite's `budget.schedule`:
    ``equal_samples`` keeps steps x batch within half a batch of the suite's (rounded half
    up), ``equal_steps`` keeps the suite's steps; never fewer than the warm-up step, the
    measured window and one timed step; the warm-up stays the same fraction, rounded up."""
    train = suite.train
    if suite.budget.schedule == "equal_samples":
        steps = (2 * train.steps * train.batch_size + batch_size) // (2 * batch_size)
    else:
        steps = train.steps
    steps = max(steps, train.measure_steps + 2)
    return steps, -(-train.warmup_steps * steps // train.steps)


def scaled_lr(suite: SuiteConfig, lr: float, batch_size: int) -> float:
    """The variant's learning rate under `budget.lr_scaling` (relative to the suite's batch)."""
    return lr * (batch_size / suite.train.batch_size) ** LR_EXPONENT[suite.budget.lr_scaling]


def headroom(suite: SuiteConfig, target: Target) -> int:
    """What is kept out of the budget: the CUDA headroom on a CUDA run, nothing on the CPU
    (the estimate equals the CPU accounting there)."""
    return suite.budget.cuda_headroom_bytes if target == "cuda" else 0


class Estimates:
    """One variant's estimated peaks, memoised so that the budgets of one command share
    them: training peaks by (checkpointing, batch), evaluation peaks by batch."""

    def __init__(self, architecture: Architecture, suite: SuiteConfig, variant: Variant, target: Target):
        self.architecture, self.suite, self.variant, self.target = architecture, suite, variant, target
        self._trainings: dict[bool, FakeTraining | None] = {}
        self._train: dict[tuple[bool, int], PhasePeak] = {}
        self._eval: dict[int, int] = {}

    def _training(self, checkpointing: bool) -> FakeTraining | None:
        """The fake training with activation checkpointing on or off; None where the
        model holds nothing checkpointing applies to."""
        if checkpointing not in self._trainings:
            train = dataclasses.replace(self.suite.train, grad_checkpointing=checkpointing)
            try:
                self._trainings[checkpointing] = FakeTraining(self.architecture, self.suite, self.variant, self.target, train)
            except ConfigError:
                if not checkpointing:
                    raise
                self._trainings[checkpointing] = None
        return self._trainings[checkpointing]

    def applies(self, checkpointing: bool) -> bool:
        return self._training(checkpointing) is not None

    def train_estimate(self, checkpointing: bool, batch_size: int) -> PhasePeak:
        key = (checkpointing, batch_size)
        if key not in self._train:
            self._train[key] = self._training(checkpointing).peak(batch_size)
        return self._train[key]

    def train_peak(self, checkpointing: bool, batch_size: int) -> int:
        return self.train_estimate(checkpointing, batch_size).peak_bytes

    def eval_peak(self, batch_size: int, items: int) -> int:
        if batch_size not in self._eval:
            training = self._training(self.suite.train.grad_checkpointing)  # checkpointing does nothing without gradients
            self._eval[batch_size] = training.eval_peak(batch_size, items).peak_bytes
        return self._eval[batch_size]


def choose(estimates: Estimates, suite: SuiteConfig, n_train: int, n_eval: int) -> Budget:
    """What ``suite.budget`` gives the variant of ``estimates``: its largest training batch
    (a multiple of `budget.batch_multiple` in [`min_batch_size`, `max_batch_size`], at most
    the training split) whose estimated peak fits, with activation checkpointing where it
    is a knob and buys a larger batch; the suite's evaluation batch, halved until its
    estimated peak fits; the schedule and the learning rate at that batch. Batch sizes
    below the minimum, or no evaluation batch that fits, give a `Budget` without a batch
    (status ``over_budget``) holding the estimated peak at the minimum."""
    rules, target = suite.budget, estimates.target
    available = rules.bytes - headroom(suite, target)
    multiple = rules.batch_multiple
    lowest = -(-rules.min_batch_size // multiple)  # in multiples
    limit = min(rules.max_batch_size, n_train) // multiple
    if limit < lowest:
        raise ConfigError(
            f"key 'budget.min_batch_size': {rules.min_batch_size} (a multiple of {multiple}) exceeds the largest batch searched, "
            f"min(budget.max_batch_size, the {n_train} training images) = {min(rules.max_batch_size, n_train)}"
        )
    base = Budget(
        bytes=rules.bytes,
        target=target,
        headroom_bytes=headroom(suite, target),
        schedule=rules.schedule,
        lr_scaling=rules.lr_scaling,
        validated=target == "cpu",
        unvalidated=[] if target == "cpu" else [UNCHECKED_CUDA_BUDGET, *unvalidated(suite.train)],
    )
    if available < 1:
        return dataclasses.replace(base, reason=f"the budget is not above the CUDA headroom of {size_label(base.headroom_bytes)}")
    options = [suite.train.grad_checkpointing]
    if "grad_checkpointing" in rules.knobs and not suite.train.grad_checkpointing and estimates.applies(True):
        options.append(True)
    found = {c: largest_batch(lambda k, c=c: estimates.train_estimate(c, k * multiple), available, limit=limit) for c in options}
    checkpointing = max(options, key=lambda c: found[c])  # ties: the first, without checkpointing (faster)
    batch = found[checkpointing] * multiple
    if batch < lowest * multiple:
        at_min = estimates.train_peak(checkpointing, lowest * multiple)
        return dataclasses.replace(
            base,
            estimated_train_peak_bytes=at_min,
            reason=f"estimated train peak at the minimum batch {lowest * multiple}: {at_min:,} bytes, "
            f"above the {available:,} bytes available",
        )
    eval_batch = suite.eval.batch_size
    while (eval_peak := estimates.eval_peak(eval_batch, n_eval)) > available and eval_batch > 1:
        eval_batch //= 2
    train_peak = estimates.train_peak(checkpointing, batch)
    if eval_peak > available:
        return dataclasses.replace(
            base,
            estimated_train_peak_bytes=train_peak,
            estimated_eval_peak_bytes=eval_peak,
            reason=f"estimated eval peak at evaluation batch 1: {eval_peak:,} bytes, above the {available:,} bytes available",
        )
    steps, warmup = schedule(suite, batch)
    return dataclasses.replace(
        base,
        batch_size=batch,
        eval_batch_size=eval_batch,
        steps=steps,
        warmup_steps=warmup,
        grad_checkpointing=checkpointing,
        lr=scaled_lr(suite, estimates.variant.config.lr, batch),
        samples=steps * batch,
        estimated_train_peak_bytes=train_peak,
        estimated_eval_peak_bytes=eval_peak,
    )


# Estimates by (the suite without its budget, the variant, the target): the budgets of one
# command, and of every plan of one process, share them.
_ESTIMATES: dict[tuple[str, str], Estimates] = {}


def choices(
    architecture: Architecture, suite: SuiteConfig, variants: list[Variant], target: Target, n_train: int, n_eval: int
) -> dict[str, Budget]:
    """`choose` for each variant (by name), with a progress bar: the estimates take seconds each."""
    unbudgeted = dataclasses.replace(suite, budget=BudgetConfig())
    out = {}
    bar = tqdm(variants, desc=f"budget {size_label(suite.budget.bytes)}", unit="variant", leave=False, disable=None)
    with frozen_heap():
        for variant in bar:
            key = (cfgmod.run_hash(unbudgeted, variant, 0), target)
            if key not in _ESTIMATES:
                _ESTIMATES[key] = Estimates(architecture, unbudgeted, variant, target)
            out[variant.name] = choose(_ESTIMATES[key], suite, n_train, n_eval)
    return out


def settings(suite: SuiteConfig, choice: Budget) -> RunSettings:
    """What a run executes under ``choice`` (which has a batch)."""
    train = dataclasses.replace(
        suite.train,
        batch_size=choice.batch_size,
        steps=choice.steps,
        warmup_steps=choice.warmup_steps,
        grad_checkpointing=choice.grad_checkpointing,
    )
    return RunSettings(train, choice.eval_batch_size, choice.lr)


def exceeded(choice: Budget, memory: dict) -> list[str]:
    """The measured figures of a run (its record's ``cost.memory``) above the budget: the
    train and eval peaks; on CUDA also the allocator's reserved peaks, which hold the cache."""
    keys = ["train_peak_bytes", "eval_peak_bytes"]
    if memory.get("source") == "cuda":
        keys += ["train_reserved_peak_bytes", "eval_reserved_peak_bytes"]
    return [key for key in keys if memory.get(key) is not None and memory[key] > choice.bytes]
