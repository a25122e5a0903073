"""Runs the (variant, seed) grid of a suite: one atomic result record per run, resumable,
and a failing run becomes a record instead of ending the sweep. A grid can be split into
shards that separate processes run into one folder."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from petlbench import budget as budgeting
from petlbench import config as cfgmod
from petlbench import faults, folder, records
from petlbench.config import ConfigError, RunSettings, SuiteConfig, clip
from petlbench.methods import get_method
from petlbench.models.loader import Architecture, check_weights, load_architecture
from petlbench.registry import UnsupportedError
from petlbench.schema import Budget
from petlbench.tasks import get_task
from petlbench.train import DivergedError, RunOutcome, prepare, run
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
    get_task(suite_cfg.task, f"{cfgmod.find('suites', suite)}: key 'task'")
    if budget is not None:
        suite_cfg = dataclasses.replace(suite_cfg, budget=dataclasses.replace(suite_cfg.budget, bytes=budget))
    # with weights: a shipped architecture (config only) is an error here
    architecture = load_architecture(suite_cfg.model.name, weights=True)
    if suite_cfg.data.text_length > architecture.max_text_positions:
        raise ConfigError(
            f"key 'data.text_length': {suite_cfg.data.text_length} exceeds the {architecture.max_text_positions} text positions of {suite_cfg.model.name}"
        )
    check_weights(suite_cfg.model.name, suite_cfg.model.allow_pickle)
    n_train, n_eval = _check_data(suite_cfg)
    names = default_variants() if methods is None else methods
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
    output = output or Path("results") / suite_cfg.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    if budget is not None:
        output = output / f"budget-{size_label(budget)}"
    plan = Plan(suite_cfg, variants, list(seeds), list(overrides), output, shard, unsupported=unsupported)
    folder.check_writable(output, create=False)
    folder.check_manifest(output, suite_cfg, plan.grid(), sharded=shard is not None)
    if suite_cfg.budget.bytes:
        target = "cuda" if device is not None and device.type == "cuda" else "cpu"
        supported = [v for v in variants if v.name not in unsupported]
        plan.budgets = budgeting.choices(architecture, suite_cfg, supported, target, n_train, n_eval)
    return plan


class Attempt(NamedTuple):
    """How one run ended: its status (`schema.STATUSES`), the reason where it is not ``ok``,
    what it measured where it is, and the environment of the process it ran in."""

    status: str
    error: str | None
    outcome: RunOutcome | None
    env: dict[str, Any] | None = None


def limit_cuda_memory(device: torch.device, nbytes: int) -> None:
    """Cap this process's CUDA caching allocator at ``nbytes`` (as on a card that small): the
    cap is per process, so each run's own process sets it. (torch wants an indexed device:
    ``cuda`` alone is the current one.)"""
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total), device)


def attempt(plan: Plan, variant: Variant, seed: int, device: torch.device, on_step: Callable[[float], None] | None) -> Attempt:
    """`_attempt`, with the environment of this process (on CUDA: the GPU it ran on)."""
    result = _attempt(plan, variant, seed, device, on_step)
    return result._replace(env=records.environment(device))


def _attempt(plan: Plan, variant: Variant, seed: int, device: torch.device, on_step: Callable[[float], None] | None) -> Attempt:
    """`train.run`, with its failure turned into a status: a failing run is a result and
    the sweep goes on. Interrupts (Ctrl-C, SIGTERM) are not failures and pass through."""
    suite = plan.suite
    try:
        if plan.memory_limit is not None:
            limit_cuda_memory(device, plan.memory_limit)
        return Attempt("ok", None, run(suite, variant, seed, device, on_step, plan.settings(variant)))
    except DivergedError as exc:
        return Attempt("diverged", str(exc), None)
    except UnsupportedError as exc:  # the method does not apply to this backbone
        return Attempt("unsupported", str(exc), None)
    except torch.OutOfMemoryError as exc:
        limit = f", allocator capped at {plan.memory_limit} bytes" if plan.memory_limit is not None else ""
        return Attempt("oom", f"{exc} (batch size {plan.settings(variant).train.batch_size}{limit})", None)
    except Exception as exc:
        traceback.print_exc()
        return Attempt("error", "".join(traceback.format_exception_only(exc)).strip(), None)


def _child(conn: Connection, plan: Plan, variant: Variant, seed: int, device: torch.device) -> None:
    """The body of a run's own process: each step's loss, then the `Attempt`, go to the parent.
    Ctrl-C reaches the whole process group: the parent decides, and stops this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # already ignored from the start (`attempt_in_fresh_process`)
    conn.send(("result", attempt(plan, variant, seed, device, lambda loss: conn.send(("step", loss)))))
    conn.close()


# How long a run's process may take to exit after its result (CUDA teardown included).
CHILD_EXIT_S = 60


def died(exitcode: int | None) -> str:
    """How a run's process ended without a result, from its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:  # a real-time signal has no name
            name = signal.strsignal(-exitcode) or "no name"
        oom = " (the kernel's out-of-memory killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"the run's process was killed by signal {-exitcode} ({name}){oom}"
    return f"the run's process exited with code {exitcode} before sending its result"


def attempt_in_fresh_process(
    plan: Plan, variant: Variant, seed: int, device: torch.device, on_step: Callable[[float], None] | None
) -> Attempt:
    """`attempt` in a new interpreter (spawned, not forked): on CUDA, allocator state, cuBLAS
    handles and references leaked by one method would otherwise change the next one's
    figures. Its steps reach ``on_step`` as they happen; a process that dies is an ``error``
    naming its exit code or signal. Interrupted here, the process is stopped with this one."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, plan, variant, seed, device), name=f"petlbench-{variant.name}-seed{seed}")
    # The child starts with SIGINT ignored (an ignored signal stays ignored across exec):
    # Ctrl-C reaches the whole process group, and the child's own import time is no place
    # for a KeyboardInterrupt traceback. The parent decides, and stops the child.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    send.close()  # the child holds the only writer: its exit ends `recv` with EOFError
    result = None
    try:
        faults.inject("run.spawned", variant.name)
        while result is None:
            try:
                kind, payload = receive.recv()
            except (EOFError, OSError):  # the child is gone, possibly in the middle of a message
                break
            if kind == "step" and on_step is not None:
                on_step(payload)
            elif kind == "result":
                result = payload
        process.join(CHILD_EXIT_S)  # a child that hangs in its teardown is stopped below
    finally:
        receive.close()
        if process.is_alive():
            process.terminate()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    return result if result is not None else Attempt("error", died(process.exitcode), None, records.environment(device, query_device=False))


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the sweep: which signal, and how far it got. Not an
    `Exception`: no run records it as its own failure."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name} before any run started; nothing was run")
        self.signum = signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM (what SLURM sends at a time limit) raises `Interrupted` like Ctrl-C raises
    `KeyboardInterrupt`, so that the current run is abandoned cleanly: its lock released,
    its process stopped, no temporary file left."""

    def stop(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def existing_record(path: Path, unreadable: list[Path] | None = None) -> dict[str, Any] | None:
    """The record already at ``path`` for resume; an unreadable one is named (and added to
    ``unreadable``) and run again."""
    if not path.exists():
        return None
    try:
        return records.read(path)
    except records.UnreadableRecord as exc:
        print(f"petlbench: {path}: {exc}; it is run again", file=sys.stderr)
        if unreadable is not None:
            unreadable.append(path)
        return None


def run_plan(plan: Plan, device: torch.device, isolate: bool | None = None) -> list[dict[str, Any]]:
    """Run every (variant, seed) of the plan (of its shard) not already done; return their
    records in grid order. ``isolate`` (default: on CUDA) runs each in a fresh process
    (measurement.md). The output folder is made and proven writable, its manifest checked
    and extended, and the temporary files of writers that are gone removed, before the first
    run; each run holds its lock while it runs, so that another process sharing the folder
    leaves it alone (and this one leaves alone the runs another holds). SIGINT or SIGTERM
    raise `Interrupted` with how far the sweep got."""
    isolate = device.type == "cuda" if isolate is None else isolate
    folder.check_writable(plan.output, create=True)
    folder.update_manifest(plan.output, plan.suite, plan.grid(), sharded=plan.shard is not None)
    for path in folder.clean_temporaries(plan.output):
        print(f"removed {path.name}, left by a writer that is gone", file=sys.stderr)
    out: list[dict[str, Any]] = []
    elsewhere: list[tuple[str, str, Path]] = []
    unreadable: list[Path] = []
    grid = plan.runs()
    current = ""
    try:
        for i, (variant, seed) in enumerate(grid, 1):
            current = f"{variant.name} seed {seed}"
            path = records.record_path(plan.output, variant.name, seed)
            run_hash = cfgmod.run_hash(plan.suite, variant, seed)
            if records.is_done(done := existing_record(path, unreadable), run_hash, device):
                print(f"[{i}/{len(grid)}] {current}: already done, skipped ({path})")
                out.append(done)
                continue
            lock = folder.Lock(plan.output, path.stem)
            try:  # release() removes the lock only if this process holds it
                if (holder := lock.acquire()) is not None:
                    print(f"[{i}/{len(grid)}] {current}: running in {holder}, left to it")
                    elsewhere.append((current, holder, lock.path))
                    continue
                if records.is_done(done := existing_record(path), run_hash, device):  # finished by another process meanwhile
                    print(f"[{i}/{len(grid)}] {current}: done by another process, skipped ({path})")
                    out.append(done)
                    continue
                out.append(_run_one(plan, variant, seed, device, isolate, path, f"[{i}/{len(grid)}] {current}"))
            finally:
                lock.release()
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT, _interrupted_message(signal.SIGINT, current, out, grid, plan)) from None
    except Interrupted as exc:
        raise Interrupted(exc.signum, _interrupted_message(exc.signum, current, out, grid, plan)) from None
    if unreadable:
        print(f"{len(unreadable)} unreadable records were run again (named above)", file=sys.stderr)
    if elsewhere:
        held = "; ".join(f"{run} by {holder} ({lock})" for run, holder, lock in elsewhere)
        print(
            f"{len(elsewhere)} runs were left to the processes holding them: {held}. Their records appear in {plan.output}; "
            "where no such process runs any more (a node that crashed), remove its lock file and run again"
        )
    return out


def _interrupted_message(signum: int, current: str, out: list, grid: list, plan: Plan) -> str:
    return (
        f"interrupted by {signal.Signals(signum).name} during {current}: {len(out)} of {len(grid)} runs finished, "
        f"records in {plan.output}; run the same command again to resume (finished runs are skipped)"
    )


def _run_one(plan: Plan, variant: Variant, seed: int, device: torch.device, isolate: bool, path: Path, label: str) -> dict[str, Any]:
    """One (variant, seed): run (or an `unsupported` record), write its record, report it."""
    t0 = time.perf_counter()
    choice = plan.budgets.get(variant.name)
    if variant.name in plan.unsupported:
        status, error, outcome, env = "unsupported", plan.unsupported[variant.name], None, records.environment(device, query_device=False)
    elif choice is not None and choice.batch_size is None:
        status, error, outcome, env = "over_budget", choice.reason, None, records.environment(device, query_device=False)
    else:
        with tqdm(total=plan.settings(variant).train.steps, desc=label, unit="step", leave=False, disable=None) as bar:

            def on_step(loss: float) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            status, error, outcome, env = (attempt_in_fresh_process if isolate else attempt)(plan, variant, seed, device, on_step)
    wall_s = time.perf_counter() - t0
    if choice is not None:
        choice = dataclasses.replace(choice, exceeded=budgeting.exceeded(choice, outcome.cost["memory"]) if outcome else [])
    record = records.make_record(
        plan.suite,
        variant,
        seed,
        status,
        error,
        outcome,
        env,
        wall_s,
        plan.overrides,
        plan.memory_limit,
        dataclasses.asdict(choice) if choice is not None else None,
    )
    record = records.write_record(path, record)
    faults.inject("sweep.recorded", variant.name)
    status, error = record["run"]["status"], record["run"]["error"]
    if status == "ok":
        metrics = record["metrics"]
        said = f", {get_task(metrics['task']).primary_metric.label} {metrics['values'][metrics['primary']]:.1f}"
    else:
        said = f": {error}"
    if choice is not None and choice.batch_size is not None:
        said += f", batch {choice.batch_size} x {choice.steps} steps"
        if choice.exceeded:
            said += f"; measured above the budget: {', '.join(choice.exceeded)}"
    print(f"{label}: {status} in {time.perf_counter() - t0:.0f}s{said}")
    return record
