"""The one training and evaluation loop every method goes through.

Step protocol: step 0 is the warm-up (it creates the optimizer state);
the next `train.measure_steps` steps are the memory-measured window; the remaining steps
are timed. Evaluation is a separate measured phase.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from petlbench import config as cfgmod
from petlbench import faults
from petlbench.config import DEFAULT_TASK, ConfigError, Precision, RunSettings, SuiteConfig, TrainConfig
from petlbench.measure.kernels import AttentionKernels
from petlbench.measure.memory import host_batches, meter_for, training_state
from petlbench.measure.nvml import NvmlPeak, NvmlSampler
from petlbench.measure.params import parameter_counts
from petlbench.measure.phase import PhaseResult, to_device, training_phase
from petlbench.methods import get_method
from petlbench.models.backbone import Backbone
from petlbench.models.loader import load_backbone
from petlbench.precision import autocast
from petlbench.records import memory_section
from petlbench.registry import SetupData, UnsupportedError
from petlbench.tasks import get_task
from petlbench.tasks.base import Batch, Split
from petlbench.variants import Variant


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class PlacementError(RuntimeError):
    """A prepared model holds a tensor off its backbone's device: a defect of the method
    that created it (methods create their tensors on ``backbone.device``)."""


@dataclass
class RunOutcome:
    """What one run measured (or estimated: no metrics); `sweep` turns it into a result record."""

    metrics: dict[str, float] | None = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    trainable_rule: dict[str, str] = field(default_factory=dict)
    weights: dict[str, Any] | None = None  # the record's `weights` section (runs only)


_SPLITS_CACHE: dict[tuple, dict[str, Split]] = {}


def _splits(suite: SuiteConfig, tokenizer, image_processor, device: torch.device) -> dict[str, Split]:
    """The suite's data, built once per process and shared by every run of a sweep (the
    model's preprocessors were checked by `plan.make_plan`)."""
    key = (suite.task, suite.model.name, json.dumps(cfgmod.to_dict(suite.data), sort_keys=True), device.type)
    if key not in _SPLITS_CACHE:
        task = get_task(suite.task).implementation
        _SPLITS_CACHE[key] = task.splits(suite, tokenizer, image_processor, pin_memory=device.type == "cuda")
    return _SPLITS_CACHE[key]


def setup_batches(split: Split, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]:
    """Training batches for a method's set-up, from a sampler of their own, so that the
    training batches stay identical for every method."""
    for batch in split.training_batches(batch_size, torch.Generator().manual_seed(seed + 7919)):
        yield to_device(batch, device)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up, then cosine decay to zero (for `LambdaLR`)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(params: list[torch.nn.Parameter], train: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The suite's AdamW, its implementation passed explicitly (the defaults differ between
    CPU and CUDA, and so do their temporaries)."""
    impl = train.optimizer_impl
    return torch.optim.AdamW(
        params,
        lr=lr,
        weight_decay=train.weight_decay,
        foreach=impl == "foreach",
        fused=True if impl == "fused" else None,
    )


def prepare(
    backbone: Backbone,
    train: TrainConfig,
    variant: Variant,
    data: Callable[[int], Iterator[Batch]] | None = None,
    task: str = DEFAULT_TASK,
) -> nn.Module:
    """``variant``'s method applied to ``backbone``, then the training rules ``train`` (the
    suite's, or what a budget derived from them: `RunSettings`) for the projections, the
    logit scale and activation checkpointing, and ``task``'s head (`Task.new_head`, as
    ``model.task_head``): the model that `run` and the estimate both train, wholly on the
    backbone's device (checked, `PlacementError`). ``data(batch_size)`` feeds the set-up of
    methods that read training data (`MethodSpec.needs_data`), with the task's loss
    (`registry.SetupData`)."""
    device, spec, task_spec = backbone.device, get_method(variant.method), get_task(task)
    if (reason := task_spec.unsupported_reason(variant.method)) is not None:
        raise UnsupportedError(reason)
    implementation = task_spec.implementation
    head = implementation.new_head(backbone)
    if head is not None:  # made first, so that a set-up running the task's loss on the backbone reaches it
        backbone.task_head = head
    model = spec.apply(backbone, variant.config, None if data is None else SetupData(data, implementation.loss))
    if not spec.defines_head:
        if train.head == "trainable" and not backbone.projections():
            raise ConfigError(f"train.head: trainable, but a {backbone.family!r} backbone has no projection head (keep it frozen)")
        for projection in backbone.projections():
            projection.requires_grad_(train.head == "trainable")
    if (temperature := backbone.temperature()) is not None:
        temperature.requires_grad_(train.temperature == "trainable")
    elif train.temperature == "trainable":
        raise ConfigError(f"train.temperature: trainable, but a {backbone.family!r} backbone has no temperature (keep it frozen)")
    if head is not None:  # on the trained model, trained whatever the method froze
        del backbone.task_head
        model.task_head = head.requires_grad_(True)
    if not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("task_head.")):
        raise ConfigError(f"method {variant.name!r} leaves no trainable parameter")
    if train.grad_checkpointing:
        checkpoint_blocks(model)  # after the method: PEFT and adapters have changed the blocks by now
    check_placement(model, device, variant.name)
    return model


def check_placement(model: nn.Module, device: torch.device, variant: str) -> None:
    """Raise `PlacementError` naming the first parameter or buffer of ``model`` that is not on
    ``device``. Checked, not repaired: moving it here would hide the defect, and could not
    reach tensors the method creates during its set-up or its forward."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device != device:
            raise PlacementError(
                f"method variant {variant!r}: {name} is on {tensor.device}, the backbone on {device}: "
                "a method must create its tensors on its backbone's device (backbone.device)"
            )


def checkpoint_blocks(model: nn.Module) -> list[str]:
    """Turn on non-reentrant activation checkpointing of every transformer block in
    ``model``, through transformers' own mechanism, on each transformers model inside it
    that supports it (CLIP; BERT but not the ResNet of the VSE family). Returns their
    module names. Methods whose backbone runs under no_grad (LST, UniPT) are unaffected.

    transformers also hooks the input embeddings so that their output requires grad (for
    reentrant checkpointing and PEFT models); non-reentrant checkpointing needs no such thing,
    and the hook would make a frozen text tower (linear probe, partial) keep activations for
    a backward it does not need, so it is removed again. Parameter flags are left untouched."""
    names: list[str] = []
    for name, module in model.named_modules():  # parents first: keep the outermost (it reaches its submodels)
        inside = any(name.startswith(f"{outer}.") or not outer for outer in names)
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing and not inside:
            names.append(name)
    if not names:
        raise ConfigError(
            f"train.grad_checkpointing: {type(model).__name__} holds no transformers model that supports activation checkpointing"
        )
    for name in names:
        module = model.get_submodule(name)
        # transformers 5.24 calls it `activation_checkpointing_enable` (its old name warns); 5.17 has only the old name
        enable = getattr(module, "activation_checkpointing_enable", None) or module.gradient_checkpointing_enable
        enable({"use_reentrant": False})
        module.disable_input_require_grads()
    return names


def trainable_rule(suite: SuiteConfig, variant: Variant) -> dict[str, str]:
    """The rules `prepare` applied to the projections and the logit scale (and the task's
    head, where the task has one), for the record."""
    rule = {
        "head": "defined by the method" if get_method(variant.method).defines_head else suite.train.head,
        "temperature": suite.train.temperature,
    }
    return rule | ({"task_head": "trainable"} if get_task(suite.task).head else {})


def train_step(
    model: nn.Module, batch: Batch, opt: torch.optim.Optimizer, precision: Precision = "fp32", task: str = DEFAULT_TASK
) -> torch.Tensor:
    """One training step exactly as the protocol defines it, for `run` and the estimate
    alike: forward and ``task``'s loss, backward, optimizer step,
    ``zero_grad(set_to_none=True)``; forward and loss under the suite's ``precision``
    (`precision.autocast`). Returns the loss tensor (reading its value is the caller's: fake
    tensors have none)."""
    with autocast(precision, next(iter(batch.values())).device.type):
        loss = get_task(task).implementation.loss(model, batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


class Training:
    """A variant's prepared model, its optimizer and the suite's training step: the one
    assembly of "variant -> prepared model -> optimizer -> measured phase" that `run`, the
    estimate (`estimate.FakeTraining`), the scripts and the tests measure."""

    def __init__(self, model: nn.Module, train: TrainConfig, lr: float, task: str = DEFAULT_TASK):
        self.model, self.train, self.lr, self.task = model, train, lr, task
        self.new_optimizer()

    @classmethod
    def of(
        cls,
        backbone: Backbone,
        train: TrainConfig,
        variant: Variant,
        data: Callable[[int], Iterator[Batch]] | None = None,
        task: str = DEFAULT_TASK,
        lr: float | None = None,
    ) -> Training:
        """``variant`` prepared on ``backbone`` (`prepare`) with a fresh optimizer at ``lr``
        (default: the variant's)."""
        return cls(prepare(backbone, train, variant, data, task), train, variant.config.lr if lr is None else lr, task)

    def new_optimizer(self) -> None:
        """A fresh optimizer over what trains (no state yet), the model in training mode."""
        self.opt = make_optimizer([p for p in self.model.parameters() if p.requires_grad], self.train, self.lr)
        self.model.train()

    def step(self, batch: Batch) -> torch.Tensor:
        """`train_step` of this model, optimizer, precision and task."""
        return train_step(self.model, batch, self.opt, self.train.precision, self.task)

    def resident(self, steps_on_host: bool = False):
        """What lives between two steps (`measure.memory.training_state`)."""
        return training_state(self.model, self.opt, steps_on_host)

    def measure(
        self, batches: Iterator[Batch], device: torch.device, meter, steps_on_host: bool = False, step=None, **phase
    ) -> PhaseResult:
        """The one measured phase (`measure.phase.training_phase`) of this training's steps
        (or of ``step``, one that wraps them) on ``batches``; ``phase``: its step counts and
        context managers."""
        return training_phase(step or self.step, batches, device, meter, lambda: self.resident(steps_on_host), **phase)


def _nvml_figures(peak: NvmlPeak) -> dict[str, Any]:
    """The NVML figure of the training window, for the record (absent, with why, without NVML)."""
    return {"nvml_train_peak_bytes": peak.peak_bytes, "nvml_approximate": peak.approximate, "nvml_unavailable": peak.unavailable}


def run(
    suite: SuiteConfig,
    variant: Variant,
    seed: int,
    device: torch.device,
    on_step: Callable[[float], None] | None = None,
    settings: RunSettings | None = None,
) -> RunOutcome:
    """Train ``variant`` on ``suite`` with ``seed`` and evaluate it; ``on_step(loss)`` after
    every training step (progress). ``settings``: what to execute where a budget derived it
    (default: the suite's own, `RunSettings.of`). Raises `DivergedError`, `ConfigError` or
    out-of-memory errors for the sweep to record."""
    settings = settings or RunSettings.of(suite, variant.config.lr)
    train = settings.train
    torch.manual_seed(seed)
    backbone, tokenizer, image_processor, weights = load_backbone(
        suite.model.name, suite.model.attn_implementation, device, suite.model.allow_pickle
    )
    task_spec = get_task(suite.task)
    task = task_spec.implementation
    splits = _splits(suite, tokenizer, image_processor, device)
    train_split, eval_split = splits["train"], splits[suite.eval.split]

    setup = lambda batch_size: setup_batches(train_split, batch_size, seed, device)  # noqa: E731
    training = Training.of(backbone, train, variant, setup, suite.task, settings.lr)
    model, opt = training.model, training.opt

    steps, bs = train.steps, train.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(train.warmup_steps, steps))
    batches = train_split.training_batches(bs, torch.Generator().manual_seed(seed))

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss = training.step(batch).item()
        sched.step()
        if not math.isfinite(loss):
            raise DivergedError(f"loss became {loss}")
        if on_step is not None:
            on_step(loss)

    meter = meter_for(device)
    cuda_index = (torch.cuda.current_device() if device.index is None else device.index) if device.type == "cuda" else None
    nvml = NvmlSampler(cuda_index) if cuda_index is not None else contextlib.nullcontext()
    # on CUDA, AdamW keeps its step counters on the host unless fused (they are no device memory)
    steps_on_host = device.type == "cuda" and train.optimizer_impl != "fused"
    warmup = contextlib.ExitStack()  # the warm-up is not measured: the kernel observer costs nothing there
    attention = warmup.enter_context(AttentionKernels())
    warmup.callback(faults.inject, "run.warmup", variant.name)
    t_train = time.perf_counter()
    phase = training.measure(
        batches,
        device,
        meter,
        steps_on_host,
        step,
        measured=train.measure_steps,
        timed=steps - 1 - train.measure_steps,
        around_warmup=warmup,
        around_window=nvml,
    )
    train_s = time.perf_counter() - t_train
    train_peak, data_waits, step_times = phase.peak, phase.timed.waits, phase.timed.steps
    n_measured = len(phase.measured.steps)

    # Evaluation: the optimizer state goes first (on CUDA it would otherwise sit inside the
    # evaluation peak of methods in proportion to what they train). One pass is timed; the
    # memory is measured on a second, identical pass, so that the CPU accounting's per-op
    # cost never enters the timing.
    opt.state.clear()
    if hasattr(batches, "close"):
        batches.close()  # drops the training DataLoader: its workers stop, their prefetched batches go

    def evaluate() -> dict[str, Any]:
        return task.evaluate(model, eval_split, settings.eval_batch_size, device, suite.eval.folds, train.precision, host_batches)

    t_eval = time.perf_counter()
    metrics = {"task": task_spec.name, "primary": task_spec.primary, **evaluate()}
    eval_s = time.perf_counter() - t_eval
    with meter.phase(*training_state(model)) as eval_peak:
        evaluate()

    median_step = statistics.median(step_times) if step_times else None
    cost = {
        **parameter_counts(model),
        "memory": memory_section(
            meter.source, train_peak, eval_peak, [1, n_measured], **(_nvml_figures(nvml.result) if device.type == "cuda" else {})
        ),
        "attention_kernels": attention.kernels,
        "step_time_s_median": median_step,
        "data_wait_s_median": statistics.median(data_waits) if data_waits else None,
        "data_workers": train_split.workers,
        "timed_steps": [n_measured + 1, steps - 1] if step_times else [],
        "train_samples_per_s": bs / statistics.median(map(sum, zip(data_waits, step_times, strict=True))) if step_times else None,
        "eval_samples_per_s": task.eval_items(eval_split) / eval_s,
        "train_s": train_s,
        "eval_s": eval_s,
    }
    return RunOutcome(metrics=metrics, cost=cost, trainable_rule=trainable_rule(suite, variant), weights=weights)
