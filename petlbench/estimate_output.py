"""What `petlbench estimate` prints and writes: the paragraph saying what the figures are,
the table, the JSON and the result records of the estimates (`petlbench.estimate`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from petlbench import records
from petlbench.estimate import UNCHECKED_BF16, Job, Row, unvalidated
from petlbench.measure.estimate import CUDA_GRANULARITY, CUDA_WORKSPACE_BYTES
from petlbench.schema import Budget
from petlbench.train import RunOutcome, trainable_rule
from petlbench.units import MiB, memory_unit

# The breakdown of a peak, in table order, with column names.
PARTS = {"parameters": "parameters", "optimizer_state": "optimizer state", "transient_peak": "transient peak", "workspace": "workspace"}
# An estimate depends on no seed; records still name one (`records.record_path`).
SEED = 0


def describe(job: Job, batch: str) -> str:
    """One paragraph saying what the figures are (``batch``: at which batch size), how far
    they are validated, and which variants were left out."""
    train, side = job.suite.train, job.architecture.image_size
    precision = "bf16 autocast" if train.precision == "bf16" else train.precision
    checkpointing = ", activation checkpointing of every transformer block" if train.grad_checkpointing else ""
    bf16 = f" {UNCHECKED_BF16}." if train.precision == "bf16" else ""
    left_out = (
        f" Left out, they (their methods, or their settings) do not apply to the {job.architecture.family!r} family: {', '.join(job.unsupported)}."
        if job.unsupported
        else ""
    ) + (f" Left out, their methods do not serve the task {job.suite.task!r}: {', '.join(job.unserved)}." if job.unserved else "")
    if job.misfits:
        left_out += " Left out, their settings do not fit the model: " + "; ".join(f"{n} ({why})" for n, why in job.misfits.items()) + "."
    inputs = f"{side}x{side} images, {job.suite.data.text_length} text tokens" if side else _text_inputs(job)
    return (
        f"Estimated training peak on a GPU (torch.cuda.max_memory_allocated) of {job.model}, {batch}, {inputs}, "
        f"{precision}{checkpointing}, AdamW {train.optimizer_impl}, "
        f"head {train.head}, temperature {train.temperature} (suite {job.suite.name}): "
        f"fake tensors, each allocation rounded up to {CUDA_GRANULARITY} B, plus {CUDA_WORKSPACE_BYTES / MiB:.0f} MiB "
        "of cuBLAS workspaces (an unvalidated constant until checked on a GPU)." + bf16 + left_out
    )


def _text_inputs(job: Job) -> str:
    """A text-to-text suite's lengths, the target's as the estimate takes it."""
    return f"{job.suite.data.text_length} source and {job.suite.data.target_length} target tokens"


def table(rows: list[Row]) -> str:
    """Method, trainable parameters, (largest batch,) peak and its breakdown, one memory unit."""
    unit, scale = memory_unit(row.peak.peak_bytes for row in rows)
    budget = any(row.budget_bytes is not None for row in rows)
    body = []
    for row in rows:
        parts = [f"{row.peak.breakdown.get(key, 0) / scale:.2f}" for key in PARTS]
        largest = [row.max_batch_size or "over budget"] if budget else []
        body.append([row.variant.name, f"{row.params['params_trainable']:,}", *largest, f"{row.peak.peak_bytes / scale:.2f}", *parts])
    peak_header = f"train peak at it ({unit})" if budget else f"train peak ({unit})"
    headers = [
        "method",
        "trainable params",
        *(["largest batch"] if budget else []),
        peak_header,
        *(f"{name} ({unit})" for name in PARTS.values()),
    ]
    return tabulate(body, headers=headers, disable_numparse=True, colalign=("left", *["right"] * (len(headers) - 1)))


def as_json(job: Job, rows: list[Row]) -> str:
    """A list with one object per variant."""
    out = []
    for row in rows:
        item: dict[str, Any] = {
            "variant": row.variant.name,
            "method": row.variant.method,
            "registered_method": row.variant.method,  # the old name of "method", kept for one release
            "model": job.model,
            "batch_size": row.batch_size,
            "text_length": job.suite.data.text_length,
            **({"target_length": job.suite.data.target_length} if hasattr(job.suite.data, "target_length") else {}),
            "precision": job.suite.train.precision,
            "grad_checkpointing": job.suite.train.grad_checkpointing,
            "optimizer_impl": job.suite.train.optimizer_impl,
            "validated": not unvalidated(job.suite.train),
            "unvalidated": unvalidated(job.suite.train),
            **row.params,
            "train_peak_bytes": row.peak.peak_bytes,
            "breakdown": row.peak.breakdown,
        }
        if row.budget_bytes is not None:
            item.update(budget_bytes=row.budget_bytes, max_batch_size=row.max_batch_size)
        out.append(item)
    return json.dumps(out, indent=2)


def write_records(job: Job, rows: list[Row], output: Path) -> list[Path]:
    """Result records of the usual schema (memory source ``estimate``, no metrics). At a
    batch size, the suite holds it; under a budget, the suite holds the budget (one
    `suite_hash` for every variant) and the record's ``budget`` section the largest batch,
    or status ``over_budget`` with the peak at batch 1 where none fits."""
    paths = []
    env = records.environment(torch.device("cpu"))
    for row in rows:
        if row.budget_bytes is None:
            suite, budget = dataclasses.replace(job.suite, train=dataclasses.replace(job.suite.train, batch_size=row.batch_size)), None
        else:
            suite = dataclasses.replace(job.suite, budget=dataclasses.replace(job.suite.budget, bytes=row.budget_bytes))
            budget = Budget(
                bytes=row.budget_bytes,
                target="cuda",
                headroom_bytes=0,
                schedule=suite.budget.schedule,
                lr_scaling=suite.budget.lr_scaling,
                validated=not unvalidated(suite.train),
                unvalidated=unvalidated(suite.train),
                batch_size=row.max_batch_size or None,
                estimated_train_peak_bytes=row.peak.peak_bytes,
                reason=None if row.max_batch_size else f"estimated train peak at batch 1: {row.peak.peak_bytes:,} bytes, above the budget",
            )
        memory = records.memory_section(
            "estimate",
            row.peak,
            None,
            [1, 1],
            target="cuda",
            allocation_granularity_bytes=CUDA_GRANULARITY,
            budget_bytes=row.budget_bytes,
            validated=not unvalidated(job.suite.train),
            unvalidated=unvalidated(job.suite.train),
        )
        outcome = RunOutcome(metrics=None, cost={**row.params, "memory": memory}, trainable_rule=trainable_rule(suite, row.variant))
        status, error = ("over_budget", budget.reason) if budget is not None and budget.batch_size is None else ("ok", None)
        path = records.record_path(output, row.variant.name, SEED)
        record = records.make_record(
            suite, row.variant, SEED, status, error, outcome, env, row.wall_s, budget=dataclasses.asdict(budget) if budget else None
        )
        records.write_record(path, record)
        paths.append(path)
    return paths
