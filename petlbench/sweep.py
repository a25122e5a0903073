"""Runs the (variant, seed) grid of a suite: one atomic result record per run, resumable,
and a failing run becomes a record instead of ending the sweep. A grid can be split into
shards that separate processes run into one folder."""

from __future__ import annotations

import multiprocessing
import re
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from petlbench import config as cfgmod
from petlbench import faults, records
from petlbench.config import ConfigError, SuiteConfig, Variant
from petlbench.data.files import validate as validate_data
from petlbench.models.loader import load_architecture, load_preprocessors
from petlbench.registry import UnsupportedError, registered
from petlbench.train import DivergedError, RunOutcome, run


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

    def grid(self) -> list[tuple[Variant, int]]:
        """Every (variant, seed) of the sweep, in the order shards are cut from."""
        return [(v, s) for v in self.variants for s in self.seeds]

    def runs(self) -> list[tuple[Variant, int]]:
        """The (variant, seed) this process runs: the whole grid, or its shard's part."""
        return self.shard.select(self.grid()) if self.shard else self.grid()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def default_variants() -> list[str]:
    """One variant per registered method: the one named after it (`methods/<method>.yaml`)."""
    shipped = {p.stem for p in cfgmod.available("methods")}
    return [name for name in sorted(registered()) if name in shipped]


def _check_data(suite: SuiteConfig) -> None:
    """Data read from files is checked whole (every image) before the first run, and so is
    the model's image processor that reads it; the evaluation folds must split the
    evaluated images equally."""
    data = suite.data
    if data.kind == "scenes":
        n_eval = getattr(data, f"{suite.eval.split}_images")
    else:
        if load_preprocessors(suite.model.name)[1] is None:
            raise ConfigError(
                f"model {suite.model.name!r} has no image processor (preprocessor_config.json), which data.kind {data.kind!r} needs: "
                "save one next to the checkpoint (e.g. CLIPProcessor.save_pretrained)"
            )
        n_eval = len(validate_data(data)[suite.eval.split])
    if n_eval % suite.eval.folds:
        raise ConfigError(
            f"key 'eval.folds': {suite.eval.folds} folds do not split the {n_eval} images of the {suite.eval.split} split equally"
        )


def make_plan(
    suite: str, methods: list[str] | None, seeds: list[int] | None, output: Path | None, overrides: list[str], shard: Shard | None = None
) -> Plan:
    """Validate everything a sweep needs before any run starts."""
    if shard is not None and output is None:
        raise ConfigError(
            f"--shard {shard}: needs --output DIR, the one folder all shards write into (the default folder is named after each process's start time)"
        )
    suite_cfg = cfgmod.load_suite(suite, overrides)
    # with weights: a shipped architecture (config only) is an error here
    max_text = load_architecture(suite_cfg.model.name, weights=True).max_text_positions
    if suite_cfg.data.text_length > max_text:
        raise ConfigError(
            f"key 'data.text_length': {suite_cfg.data.text_length} exceeds the {max_text} text positions of {suite_cfg.model.name}"
        )
    _check_data(suite_cfg)
    names = methods or default_variants()
    if names == ["all"]:
        names = [p.stem for p in cfgmod.available("methods")]
    variants = [cfgmod.load_variant(name, overrides) for name in names]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Plan(suite_cfg, variants, seeds or suite_cfg.seeds, list(overrides), output or Path("results") / suite_cfg.name / stamp, shard)


def make_record(
    plan: Plan, variant: Variant, seed: int, status: str, error: str | None, outcome: RunOutcome | None, env: dict[str, Any], wall_s: float
) -> dict[str, Any]:
    """The result record of one (variant, seed): what `run` measured, or an estimate."""
    suite = plan.suite
    return {
        "schema": records.SCHEMA,
        "run": {
            "suite": suite.name,
            "suite_version": suite.version,
            "suite_hash": cfgmod.suite_hash(suite),
            "run_hash": cfgmod.run_hash(suite, variant, seed),
            "method": variant.method,
            "variant": variant.name,
            "seed": seed,
            "overrides": plan.overrides,
            "memory_limit_bytes": plan.memory_limit,
            "status": status,
            "error": error,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "config": {"suite": cfgmod.to_dict(suite), "method": {"name": variant.method, **cfgmod.to_dict(variant.config)}},
        "trainable_rule": outcome.trainable_rule if outcome else None,
        "metrics": outcome.metrics if outcome else None,
        "cost": {**outcome.cost, "wall_s": wall_s} if outcome else None,
        "env": env,
    }


class Attempt(NamedTuple):
    """How one run ended: its status (`records.STATUSES`), the reason where it is not ``ok``,
    what it measured where it is, and the environment of the process it ran in."""

    status: str
    error: str | None
    outcome: RunOutcome | None
    env: dict[str, Any] | None = None


def limit_cuda_memory(device: torch.device, nbytes: int) -> None:
    """Cap this process's CUDA caching allocator at ``nbytes`` (as on a card that small): the
    cap is per process, so each run's own process sets it."""
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
        return Attempt("ok", None, run(suite, variant, seed, device, on_step))
    except DivergedError as exc:
        return Attempt("diverged", str(exc), None)
    except UnsupportedError as exc:  # the method does not apply to this backbone
        return Attempt("unsupported", str(exc), None)
    except torch.OutOfMemoryError as exc:
        limit = f", allocator capped at {plan.memory_limit} bytes" if plan.memory_limit is not None else ""
        return Attempt("oom", f"{exc} (batch size {suite.train.batch_size}{limit})", None)
    except Exception as exc:
        traceback.print_exc()
        return Attempt("error", "".join(traceback.format_exception_only(exc)).strip(), None)


def _child(conn: Connection, plan: Plan, variant: Variant, seed: int, device: torch.device) -> None:
    """The body of a run's own process: each step's loss, then the `Attempt`, go to the parent."""
    conn.send(("result", attempt(plan, variant, seed, device, lambda loss: conn.send(("step", loss)))))
    conn.close()


def died(exitcode: int | None) -> str:
    """How a run's process ended without a result, from its exit code."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else "?"
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
    process.start()
    send.close()  # the child holds the only writer: its exit ends `recv` with EOFError
    result = None
    try:
        while result is None:
            try:
                kind, payload = receive.recv()
            except EOFError:
                break
            if kind == "step" and on_step is not None:
                on_step(payload)
            elif kind == "result":
                result = payload
        process.join()
    finally:
        receive.close()
        if process.is_alive():
            process.terminate()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    return result if result is not None else Attempt("error", died(process.exitcode), None, records.environment(device, query_device=False))


def run_plan(plan: Plan, device: torch.device, isolate: bool | None = None) -> list[dict[str, Any]]:
    """Run every (variant, seed) of the plan (of its shard) not already done; return their
    records in grid order. ``isolate`` (default: on CUDA) runs each in a fresh process (measurement.md)."""
    isolate = device.type == "cuda" if isolate is None else isolate
    out = []
    grid = plan.runs()
    for i, (variant, seed) in enumerate(grid, 1):
        path = records.record_path(plan.output, variant.name, seed)
        if records.is_done(path, cfgmod.run_hash(plan.suite, variant, seed), device):
            print(f"[{i}/{len(grid)}] {variant.name} seed {seed}: already done, skipped ({path})")
            out.append(records.read(path))
            continue
        t0 = time.perf_counter()
        with tqdm(
            total=plan.suite.train.steps, desc=f"[{i}/{len(grid)}] {variant.name} seed {seed}", unit="step", leave=False, disable=None
        ) as bar:

            def on_step(loss: float) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            status, error, outcome, env = (attempt_in_fresh_process if isolate else attempt)(plan, variant, seed, device, on_step)
        record = make_record(plan, variant, seed, status, error, outcome, env, time.perf_counter() - t0)
        records.write_atomic(path, record)
        faults.inject("sweep.recorded", variant.name)
        rsum = f", rSum {record['metrics']['rsum']:.1f}" if status == "ok" else f": {error}"
        print(
            f"[{i}/{len(grid)}] {variant.name} seed {seed}: {status} in {record['cost']['wall_s'] if record['cost'] else time.perf_counter() - t0:.0f}s{rsum}"
        )
        out.append(record)
    return out
