"""Runs the (variant, seed) grid of a plan (`petlbench.plan`): one atomic result record per
run, resumable, and a failing run becomes a record instead of ending the sweep. A grid can
be split into shards that separate processes run into one folder."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from petlbench import budget as budgeting
from petlbench import config as cfgmod
from petlbench import faults, folder, records
from petlbench.estimate import step_flops
from petlbench.isolation import STOP_POLL_S, Cancelled, Slot, Worker, attempt
from petlbench.models.loader import load_architecture
from petlbench.plan import Plan
from petlbench.signals import Interrupted
from petlbench.tasks import get_task
from petlbench.variants import Variant


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


def run_plan(plan: Plan, device: torch.device, isolate: bool | None = None, slots: Sequence[Slot] = (Slot(),)) -> list[dict[str, Any]]:
    """Run every (variant, seed) of the plan (of its shard) not already done; return their
    records in grid order. ``isolate`` (default: on CUDA) runs them in a process of their
    own (`Worker`: on CUDA a fresh one per run, docs/measurement.md, "The step that is
    measured"). With several ``slots`` (`run --jobs`, `--devices`), that many runs go at once,
    each in the worker of a free slot, driven by a thread of this process (docs/parallel.md). The output folder is made and
    proven writable, its manifest checked and extended, and the temporary files of writers
    that are gone removed, before the first run; each run holds its lock while it runs, so
    that another process sharing the folder leaves it alone (and this one leaves alone the
    runs another holds). SIGINT or SIGTERM raise `Interrupted` with how far the sweep got,
    once every run's process is stopped."""
    parallel = len(slots) > 1
    isolate = parallel or (device.type == "cuda" if isolate is None else isolate)
    folder.check_writable(plan.output)
    folder.update_manifest(plan.output, plan.suite, plan.grid(), plan.shard)
    for path in folder.clean_temporaries(plan.output):
        print(f"removed {path.name}, left by a writer that is gone", file=sys.stderr)
    done_at: dict[int, dict[str, Any]] = {}  # grid position -> record
    elsewhere: list[tuple[str, str, Path]] = []
    unreadable: list[Path] = []
    grid = plan.runs()
    running: dict[Future, tuple[int, int]] = {}  # a parallel run -> (grid position, slot index)
    under_way: dict[int, str] = {}  # grid position -> the parallel run started there
    free = list(range(len(slots)))
    stop = threading.Event()
    workers = [Worker(slot, reuse=device.type != "cuda") for slot in slots] if isolate else [None]
    threads = resumed_threads(device, slots)

    def collect(block: bool) -> None:
        """Take the records of the parallel runs that ended (waiting for one if ``block``),
        freeing their slots; a run's exception (its record not written) ends the sweep."""
        while True:  # short waits: a signal that another thread received runs its handler only between them
            ended, _ = wait(running, timeout=STOP_POLL_S if block else 0, return_when=FIRST_COMPLETED)
            if ended or not block:
                break
        for future in ended:
            i, k = running.pop(future)
            free.append(k)
            del under_way[i]
            keep(i, future.result())

    def keep(i: int, taken: tuple[dict[str, Any] | None, tuple[str, str, Path] | None]) -> None:
        record, held = taken
        if record is not None:
            done_at[i] = record
        if held is not None:
            elsewhere.append(held)

    current = ""
    with _threads(slots[0].threads), _closing(workers), ThreadPoolExecutor(len(slots), thread_name_prefix="petlbench-run") as pool:
        try:
            for i in _start_order(plan, grid, len(slots)):
                variant, seed = grid[i - 1]
                current = f"{variant.name} seed {seed}"
                label = f"[{i}/{len(grid)}] {current}"
                path = records.record_path(plan.output, variant.name, seed)
                run_hash = cfgmod.run_hash(plan.suite, variant, seed)
                if records.is_done(done := existing_record(path, unreadable), run_hash, device, threads):
                    _say(f"{label}: already done, skipped ({path})")
                    done_at[i] = done
                    continue
                if records.is_done(done, run_hash, device, None):  # on another thread count: its metrics differ
                    _say(
                        f"{label}: its record was made on {done['env'].get('threads')} threads, this sweep's runs use {threads}: run again"
                    )
                if not parallel:
                    keep(i, _take(_Run(plan, variant, seed, device, path, label, workers[0], threads=threads), run_hash))
                    continue
                collect(block=not free)  # waits for a slot: the run's lock is taken only when it can start
                k = free.pop()
                where = f" on {slots[k]}" if slots[k].gpu is not None else ""
                under_way[i] = current  # before its thread starts: a signal may come before `running` knows it
                future = pool.submit(
                    _take,
                    _Run(plan, variant, seed, device, path, label + where, workers[k], k, stop, threads, min(len(slots), len(grid))),
                    run_hash,
                )
                running[future] = (i, k)
            while running:
                collect(block=True)
        except (KeyboardInterrupt, Interrupted) as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            during = ", ".join(under_way.values()) or current
            _stop_runs(stop, running, pool, done_at)
            raise Interrupted(signum, _interrupted_message(signum, during, done_at, grid, plan)) from None
        except BaseException:  # a record that could not be written: the other runs are abandoned too
            _stop_runs(stop, running, pool, done_at)
            raise
    if unreadable:
        print(f"{len(unreadable)} unreadable records were run again (named above)", file=sys.stderr)
    if elsewhere:
        held = "; ".join(f"{run} by {holder} ({lock})" for run, holder, lock in elsewhere)
        print(
            f"{len(elsewhere)} runs were left to the processes holding them: {held}. Their records appear in {plan.output}; "
            "where no such process runs any more (a node that crashed), remove its lock file and run again"
        )
    return [done_at[i] for i in sorted(done_at)]


def resumed_threads(device: torch.device, slots: Sequence[Slot]) -> int | None:
    """The intra-op threads a record must have been made on to count as done (`records.is_done`):
    the slots' on the CPU, where metrics depend on them; None (any) on CUDA."""
    return slots[0].threads if device.type == "cpu" else None


def _start_order(plan: Plan, grid: list[tuple[Variant, int]], slots: int) -> list[int]:
    """The grid positions (from 1) in the order their runs start: in grid order, unless the
    runs outnumber the slots of a parallel sweep; then costliest first (longest processing
    time first, by `estimate.step_flops` times the run's steps), so that the last runs to
    start are short ones and no slot idles long while the last run ends. A variant whose
    step cannot be counted on fake tensors goes first (its cost is unknown); one that runs
    nothing (unsupported, over budget) costs nothing."""
    if slots == 1 or len(grid) <= slots:
        return list(range(1, len(grid) + 1))
    architecture, costs = load_architecture(plan.suite.model.name), {}
    for variant in {variant.name: variant for variant, _ in grid}.values():
        settings, choice = plan.settings(variant), plan.budgets.get(variant.name)
        if variant.name in plan.unsupported or (choice is not None and choice.batch_size is None):
            costs[variant.name] = 0.0
            continue
        try:
            costs[variant.name] = float(settings.train.steps * step_flops(architecture, plan.suite, variant, settings.train))
        except Exception:  # a scheduling hint: the run itself says what fails
            costs[variant.name] = math.inf
    order = sorted(range(1, len(grid) + 1), key=lambda i: -costs[grid[i - 1][0].name])  # stable: grid order among equals
    _say(f"runs start costliest first (estimated FLOPs of their training): {', '.join(dict.fromkeys(grid[i - 1][0].name for i in order))}")
    return order


def _say(line: str) -> None:
    """A line of the sweep's output, above the progress bars of the runs under way (and not
    interleaved with another thread's line)."""
    tqdm.write(line)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """This process's intra-op threads set to ``count`` for the sweep (None: left as they
    are): an in-process run computes with them, and every record's ``env.threads`` (those of
    runs in their own processes too, whose records this process may write) says so."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _closing(workers: list[Worker | None]) -> contextlib.ExitStack:
    """The sweep's workers, each ended with it (`Worker.close`) whatever the others do."""
    stack = contextlib.ExitStack()
    for worker in workers:
        if worker is not None:
            stack.enter_context(worker)
    return stack


def _stop_runs(stop: threading.Event, running: dict[Future, tuple[int, int]], pool: ThreadPoolExecutor, done_at: dict) -> None:
    """Stop every parallel run: each thread stops its run's process (`Cancelled`) and releases
    its lock; a run that had its result when the signal came writes its record whole, and
    counts as finished."""
    stop.set()
    pool.shutdown(wait=True, cancel_futures=True)
    for future, (i, _) in running.items():
        if not future.cancelled() and future.exception() is None and future.result()[0] is not None:
            done_at[i] = future.result()[0]
    running.clear()


def _interrupted_message(signum: int, during: str, done_at: dict, grid: list, plan: Plan) -> str:
    return (
        f"interrupted by {signal.Signals(signum).name} during {during}: {len(done_at)} of {len(grid)} runs finished, "
        f"records in {plan.output}; run the same command again to resume (finished runs are skipped)"
    )


@dataclass(frozen=True)
class _Run:
    """One (variant, seed) of the sweep and where it runs: what `_take` and `_run_one` need."""

    plan: Plan
    variant: Variant
    seed: int
    device: torch.device
    path: Path  # its record
    label: str  # how the sweep's output names it
    worker: Worker | None  # None: in this process
    position: int = 0  # its progress bar's line (its slot's index)
    stop: threading.Event | None = None  # set when the sweep stops every parallel run
    threads: int | None = None  # its intra-op threads where they decide its metrics (the CPU), for resume
    runs_at_once: int = 1  # the most runs of the sweep at once (its slots, or fewer where its grid is smaller)


def _take(run: _Run, run_hash: str) -> tuple[dict[str, Any] | None, tuple[str, str, Path] | None]:
    """A run of the grid under its lock, taken where it runs (the sweep's thread of a
    parallel run: no lock changes hands): its record, or None where another process holds
    it (then: the run, the holder and the lock) or the sweep stopped it."""
    lock = folder.Lock(run.plan.output, run.path.stem)
    try:  # release() removes the lock only if this process holds it
        if (holder := lock.acquire()) is not None:
            _say(f"{run.label}: running in {holder}, left to it")
            return None, (f"{run.variant.name} seed {run.seed}", holder, lock.path)
        if records.is_done(done := existing_record(run.path), run_hash, run.device, run.threads):  # finished by another process meanwhile
            _say(f"{run.label}: done by another process, skipped ({run.path})")
            return done, None
        return _run_one(run), None
    except Cancelled:
        return None, None
    finally:
        lock.release()


def _run_one(run: _Run) -> dict[str, Any]:
    """One (variant, seed): run (or an `unsupported` record), write its record, report it.
    Its progress bar is at ``run.position`` (one line per slot)."""
    plan, variant, seed, device, label = run.plan, run.variant, run.seed, run.device, run.label
    t0 = time.perf_counter()
    choice = plan.budgets.get(variant.name)
    if variant.name in plan.unsupported:
        status, error, outcome, env = "unsupported", plan.unsupported[variant.name], None, records.environment(device, query_device=False)
    elif choice is not None and choice.batch_size is None:
        status, error, outcome, env = "over_budget", choice.reason, None, records.environment(device, query_device=False)
    else:
        with tqdm(
            total=plan.settings(variant).train.steps, desc=label, unit="step", leave=False, disable=None, position=run.position
        ) as bar:

            def on_step(loss: float) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            if run.worker is not None:
                status, error, outcome, env = run.worker.attempt(plan, variant, seed, device, on_step, run.stop)
            else:
                status, error, outcome, env = attempt(plan, variant, seed, device, on_step)
    wall_s = time.perf_counter() - t0
    if outcome is not None:
        outcome.cost["runs_at_once"] = run.runs_at_once
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
    record = records.write_record(run.path, record)
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
    _say(f"{label}: {status} in {time.perf_counter() - t0:.0f}s{said}")
    return record
