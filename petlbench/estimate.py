"""The estimate engine: the peak training memory of method variants on a real-size model,
or the largest batch size that fits a memory budget, from fake tensors
(`petlbench.measure.estimate`): no GPU, no weights, a few seconds per variant. What the
`estimate` command prints and writes of it is `petlbench.estimate_output`."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from petlbench import config as cfgmod
from petlbench.config import ConfigError, Precision, SuiteConfig, TrainConfig
from petlbench.measure.estimate import (
    CUDA_GRANULARITY,
    CUDA_WORKSPACE_BYTES,
    CpuNormStatistics,
    FusedAttentionDropout,
    ScalarsAsZero,
    Target,
    frozen_heap,
    largest_batch,
    materialize,
)
from petlbench.measure.memory import CpuAccountingMeter, PhasePeak, host_batches, training_state
from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method, registered
from petlbench.models.loader import Architecture, check_weights, load_architecture
from petlbench.models.resolve import ARCHITECTURES
from petlbench.signals import die_with_parent
from petlbench.tasks import get_task
from petlbench.train import Training, prepare
from petlbench.variants import Variant, data_free, load_variant, shipped

# Why figures are not yet checked against a GPU: said by the command's description, its JSON and the records.
UNCHECKED_CUDA = "the CUDA allocation rounding and the cuBLAS workspace constant are unchecked until scripts/measure_cuda.py runs on a GPU"
UNCHECKED_BF16 = (
    "bf16 figures are unvalidated until checked on a GPU: the estimate runs CPU autocast, which computes some ops "
    "(layer norm, softmax) in bf16 that CUDA autocast computes in fp32"
)


class FakeTraining:
    """One variant's model and optimizer on fake tensors, for the suite's training step
    (`train.train_step`: the suite's task's loss, same AdamW implementation) on
    ``architecture``, with the suite's data shapes; `peak` measures a steady-state step at
    any batch size through the one measured phase, and `eval_peak` the evaluation phase,
    under the CPU accounting (``target`` ``cpu``: exactly a real CPU run's figure; ``cuda``:
    shaped like `max_memory_allocated`, `petlbench.measure.estimate`). ``train``: the
    training rules (default: the suite's)."""

    def __init__(
        self, architecture: Architecture, suite: SuiteConfig, variant: Variant, target: Target = "cuda", train: TrainConfig | None = None
    ):
        self.architecture, self.suite, self.target = architecture, suite, target
        self.task = get_task(suite.task).implementation
        self.train = train or suite.train
        with torch.device("meta"):
            backbone = architecture.build(suite.model.attn_implementation)
        model = prepare(backbone, self.train, data_free(variant), task=suite.task)
        self.params = parameter_counts(model)
        self.fake_mode = FakeTensorMode()
        with self.fake_mode:
            materialize(model)
            self.training = Training(model, self.train, variant.config.lr, suite.task)
        self._first_step_state()

    def _new_optimizer(self) -> None:
        """A fresh optimizer with the state a warm-up step leaves (`_first_step_state`)."""
        with self.fake_mode:
            self.training.new_optimizer()
        self._first_step_state()

    def _first_step_state(self) -> None:
        """The state AdamW holds after its first step, made directly rather than by a
        warm-up step (which costs as much as the measured step): ``step`` and the two
        moments, as `AdamW._init_group` makes them, for every trainable parameter. AdamW
        makes state only for parameters that got a gradient: the next `peak` checks which
        did (``_unchecked``) and measures again without the state of any that did not."""
        opt = self.training.opt
        with self.fake_mode:
            for group in opt.param_groups:
                on_device = group["fused"] or group["capturable"]
                for p in group["params"]:
                    state = opt.state[p]
                    state["step"] = torch.tensor(1.0, dtype=torch.float32, device=p.device if on_device else "cpu")
                    for name in ("exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if group["amsgrad"] else [])):
                        state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self._unchecked = True

    def _norm_statistics(self) -> contextlib.AbstractContextManager:
        """`CpuNormStatistics` under autocast, the only place a normalisation sees an input in
        another dtype than its parameters; a dispatch mode costs a tenth of a step."""
        return CpuNormStatistics() if self.train.precision != "fp32" else contextlib.nullcontext()

    def peak(self, batch_size: int) -> PhasePeak:
        """The peak of a steady-state step at ``batch_size``, broken down like the CPU
        accounting, plus ``workspace``."""
        cuda, opt = self.target == "cuda", self.training.opt
        batches = iter(lambda: self.task.random_batch(self.architecture, batch_size, self.suite), None)
        steps_on_host = cuda and self.train.optimizer_impl != "fused"
        trainable = [p for group in opt.param_groups for p in group["params"]]
        reached: set[int] = set()
        meter = CpuAccountingMeter(granularity=CUDA_GRANULARITY if cuda else 1)

        def accumulated(p: torch.nn.Parameter) -> None:
            reached.add(id(p))
            meter.mark_gradient(p.grad)

        hooks = [p.register_post_accumulate_grad_hook(accumulated) for p in trainable]
        with self.fake_mode, self._norm_statistics(), FusedAttentionDropout() if cuda else contextlib.nullcontext():
            peak = self.training.measure(batches, torch.device("cpu"), meter, steps_on_host, warmup=0).peak
        for hook in hooks:
            hook.remove()
        if self._unchecked:
            self._unchecked = False
            if unreached := [p for p in trainable if id(p) not in reached]:
                for p in unreached:  # a real run's optimizer never made their state
                    del opt.state[p]
                return self.peak(batch_size)
        if cuda:
            peak.breakdown["workspace"] = CUDA_WORKSPACE_BYTES
            peak.peak_bytes += CUDA_WORKSPACE_BYTES
        peak.source = "estimate"
        return peak

    def eval_peak(self, batch_size: int, items: int) -> PhasePeak:
        """The peak of the evaluation phase (the task's evaluation at ``batch_size`` of a
        split of ``items``, `Task.random_split`), as `train.run` measures it: after
        training, with the optimizer state gone. The optimizer is made anew for a later
        `peak`. On the CUDA target the ranking that a GPU run does on the host is counted
        too: an upper bound there."""
        self.training.opt.state.clear()
        model = self.training.model
        meter = CpuAccountingMeter(granularity=CUDA_GRANULARITY if self.target == "cuda" else 1)
        with self.fake_mode, self._norm_statistics(), ScalarsAsZero():
            split = self.task.random_split(self.architecture, items, self.suite)
            with meter.phase(*training_state(model)) as peak:
                cpu, folds, precision = torch.device("cpu"), self.suite.eval.folds, self.train.precision
                self.task.evaluate(model, split, batch_size, cpu, folds, precision, host_batches)
        self._new_optimizer()
        peak.source = "estimate"
        return peak


def step_flops(architecture: Architecture, suite: SuiteConfig, variant: Variant, train: TrainConfig) -> int:
    """The floating-point operations of one training step of ``variant`` (forward, backward,
    optimizer) at ``train.batch_size``, counted on fake tensors by torch's `FlopCounterMode`
    (matrix products, convolutions, attention; a fraction of a second for the embedded
    model): the cost by which a parallel sweep starts its runs, costliest first."""
    training = FakeTraining(architecture, suite, variant, target="cpu", train=train)
    with FlopCounterMode(display=False) as counter:
        training.peak(train.batch_size)
    return counter.get_total_flops()


@dataclass
class Job:
    """What every estimate of one command shares."""

    model: str
    architecture: Architecture
    suite: SuiteConfig  # whose training rules apply, with the model and text length replaced
    variants: list[Variant]  # those whose method applies to the architecture's family and serves the suite's task
    unsupported: list[str]  # variants asked for whose method does not apply to the family, left out
    unserved: list[str] = field(default_factory=list)  # variants asked for whose method does not serve the task, left out
    # Variants whose settings do not fit the model (LST's dropped blocks past a shallow model's
    # depth), found as each is built, left out: variant -> why (filled by the estimates).
    misfits: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    """One variant's estimate at one batch size."""

    variant: Variant
    batch_size: int
    peak: PhasePeak
    params: dict[str, int]
    wall_s: float
    budget_bytes: int | None = None
    max_batch_size: int | None = None  # with a budget: the answer (0: not even batch 1 fits)


# The suite an estimate takes its training rules from when none is named, by model family.
DEFAULT_SUITES = {"clip": "vl-retrieval", "vse": "vl-retrieval", "t5": "glue"}


def make_job(
    model: str,
    suite: str | None,
    methods: list[str] | None,
    text_length: int | None,
    precision: Precision | None = None,
    grad_checkpointing: bool | None = None,
    target_length: int | None = None,
) -> Job:
    """Validate the model, the suite (default: the model family's, `DEFAULT_SUITES`), the
    variants (default: every shipped variant), the text length (default: the model's
    maximum) and the target length (a text-to-text suite's; default: the suite's) before
    anything is estimated; ``precision`` and ``grad_checkpointing`` replace the suite's
    where given. Variants
    whose method does not apply to the model's family are left out (`Job.unsupported`);
    an error when that leaves none."""
    architecture = load_architecture(model)
    if model not in ARCHITECTURES:  # weights, where the folder has them, must be the model's (nothing loads them here)
        check_weights(model, allow_pickle=True)
    max_text = architecture.max_text_positions
    if text_length is not None and not 1 <= text_length <= max_text:
        raise ConfigError(f"--seq-len {text_length}: the model {model!r} has 1 to {max_text} text positions")
    suite = suite or DEFAULT_SUITES[architecture.family]
    suite_cfg = at_text_length(cfgmod.load_suite(suite), text_length or max_text)
    if target_length is not None and not hasattr(suite_cfg.data, "target_length"):
        raise ConfigError(f"--target-len {target_length}: the suite {suite!r} has no target text (its task is {suite_cfg.task!r})")
    if hasattr(suite_cfg.data, "target_length"):  # a text-to-text suite: the target length is concrete in an estimate
        target = target_length or suite_cfg.data.target_length or cfgmod.ESTIMATE_TARGET_LENGTH
        suite_cfg = dataclasses.replace(suite_cfg, data=dataclasses.replace(suite_cfg.data, target_length=target))
    if (why := get_task(suite_cfg.task, f"{cfgmod.find('suites', suite)}: key 'task'").unserved_family(architecture.family)) is not None:
        raise ConfigError(f"--model {model}: {why}; pass --suite with a suite of that task")
    suite_cfg = dataclasses.replace(
        suite_cfg,
        description=f"estimate for {model} under the training rules of suite {suite_cfg.name}",
        model=dataclasses.replace(suite_cfg.model, name=model),
        train=dataclasses.replace(
            suite_cfg.train,
            precision=precision or suite_cfg.train.precision,
            grad_checkpointing=suite_cfg.train.grad_checkpointing if grad_checkpointing is None else grad_checkpointing,
        ),
    )
    names = methods or shipped()
    variants = [load_variant(name) for name in names]
    family, task = architecture.family, get_task(suite_cfg.task)
    unsupported = [v.name for v in variants if get_method(v.method).unsupported_reason(family, v.config) is not None]
    unserved = [v.name for v in variants if v.name not in unsupported and task.unsupported_reason(v.method) is not None]
    supported = [v for v in variants if v.name not in unsupported and v.name not in unserved]
    if not supported:
        applicable = ", ".join(
            sorted(
                name
                for name, spec in registered().items()
                if spec.unsupported_reason(family) is None and task.unsupported_reason(name) is None
            )
        )
        raise ConfigError(
            f"--variants {','.join(names)}: none applies to the {family!r} family of {model!r} and serves the task {task.name!r}; "
            f"methods that do: {applicable}"
        )
    return Job(model, architecture, suite_cfg, supported, unsupported, unserved)


def at_text_length(suite: SuiteConfig, text_length: int) -> SuiteConfig:
    """``suite`` with its text inputs ``text_length`` tokens long: estimates model a text
    length of their own (the model's maximum unless asked)."""
    return dataclasses.replace(suite, data=dataclasses.replace(suite.data, text_length=text_length))


def _estimate(job: Job, variant: Variant, batch_size: int | None, budget: int | None) -> Row | str:
    """One variant's row: its peak at ``batch_size``, or under ``budget`` its largest batch
    size whose peak fits, with the peak there (at batch 1 where none fits); why not, where
    the variant's settings do not fit the model."""
    t0 = time.perf_counter()
    try:
        training = FakeTraining(job.architecture, job.suite, variant)
    except ConfigError as exc:
        return str(exc)
    if budget is None:
        peak, largest = training.peak(batch_size), None
    else:
        peaks: dict[int, PhasePeak] = {}

        def peak(b: int) -> PhasePeak:
            peaks[b] = training.peak(b)
            return peaks[b]

        largest = largest_batch(peak, budget)
        batch_size, peak = max(largest, 1), peaks[max(largest, 1)]
    peak = dataclasses.replace(peak, trace=None)  # the search's alone
    return Row(variant, batch_size, peak, training.params, time.perf_counter() - t0, budget, largest)


# What a forked worker estimates (`_estimates`): set in the worker by its initializer from
# the parent's memory (a fork pickles nothing; the job holds the architecture's builder).
_WORK: dict[str, Any] = {}


def _start_worker(parent: int, job: Job, batch_size: int | None, budget: int | None) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler (`signals.interruptible`) is the parent's
    torch.set_num_threads(1)  # fake tensors compute nothing: a worker's cost is Python dispatch
    _WORK.update(job=job, batch_size=batch_size, budget=budget)


def _estimate_in_worker(index: int) -> Row | str:
    return _estimate(_WORK["job"], _WORK["job"].variants[index], _WORK["batch_size"], _WORK["budget"])


def workers(variants: int) -> int:
    """Processes for ``variants`` estimates: one per available core where the platform forks
    (a forked worker starts with torch imported and the job in memory), else one."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(variants, cores))


def _estimates(job: Job, batch_size: int | None = None, budget: int | None = None) -> list[Row]:
    """A row per variant, in the variants' order, estimated in `workers` processes: each
    estimate is independent and deterministic, so the figures are those of one process.
    However the command ends (an interrupt included), the pool's exit stops every worker,
    and a worker dies with the command (`signals.die_with_parent`). A variant whose settings
    do not fit the model has no row: it is in `Job.misfits`, and when no variant fits, the
    estimate is an error naming why each does not."""
    n = workers(len(job.variants))
    with contextlib.ExitStack() as stack:
        stack.enter_context(frozen_heap())
        if n > 1:
            context = multiprocessing.get_context("fork")
            pool = stack.enter_context(context.Pool(n, _start_worker, (os.getpid(), job, batch_size, budget)))
            rows = pool.imap(_estimate_in_worker, range(len(job.variants)))
        else:
            rows = (_estimate(job, variant, batch_size, budget) for variant in job.variants)
        done = list(tqdm(rows, total=len(job.variants), desc="estimate", unit="variant", leave=False, disable=None))
    job.misfits.update((variant.name, row) for variant, row in zip(job.variants, done, strict=True) if isinstance(row, str))
    if len(job.misfits) == len(job.variants):
        raise ConfigError("no variant fits the model: " + "; ".join(job.misfits.values()))
    return [row for row in done if not isinstance(row, str)]


def at_batch(job: Job, batch_size: int) -> list[Row]:
    """Every variant's estimated training peak at ``batch_size``."""
    return _estimates(job, batch_size=batch_size)


def within_budget(job: Job, budget: int) -> list[Row]:
    """Every variant's largest batch size whose estimated peak fits ``budget`` bytes, with
    the estimate at that batch size (at batch 1 where none fits)."""
    return _estimates(job, budget=budget)


def unvalidated(train: TrainConfig) -> list[str]:
    """Why estimates under the training options ``train`` are not yet checked against a GPU."""
    return [UNCHECKED_CUDA, *([UNCHECKED_BF16] if train.precision == "bf16" else [])]
