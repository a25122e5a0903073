"""Runs the (variant, seed) grid of a plan (`petlbench.plan`): one atomic result record per
run, resumable, and a failing run becomes a record instead of ending the sweep. A grid can
be split into shards that separate processes run into one folder."""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from petlbench import budget as budgeting
from petlbench import config as cfgmod
from petlbench import faults, folder, records
from petlbench.isolation import attempt, attempt_in_fresh_process
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


def run_plan(plan: Plan, device: torch.device, isolate: bool | None = None) -> list[dict[str, Any]]:
    """Run every (variant, seed) of the plan (of its shard) not already done; return their
    records in grid order. ``isolate`` (default: on CUDA) runs each in a fresh process
    (docs/measurement.md, "The step that is measured"). The output folder is made and
    proven writable, its manifest checked and extended, and the temporary files of writers
    that are gone removed, before the first run; each run holds its lock while it runs, so
    that another process sharing the folder leaves it alone (and this one leaves alone the
    runs another holds). SIGINT or SIGTERM raise `Interrupted` with how far the sweep got."""
    isolate = device.type == "cuda" if isolate is None else isolate
    folder.check_writable(plan.output)
    folder.update_manifest(plan.output, plan.suite, plan.grid(), plan.shard)
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
