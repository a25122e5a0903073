"""The result record, field by field (``schema: 3``): one definition that the writer builds
and the reader checks every record against (`petlbench.records`), and that the record
table of docs/measurement.md lists. Records are stored as JSON objects with exactly these keys.

Schemas 1 and 2 are read too, as records of the retrieval task: schema 2 held the recalls
and rSum as the metrics' own keys (`LEGACY_METRICS`), which schema 3 moves under
``values`` beside the task and its primary metric; schema 1 is schema 2 without the
fields added since, which take their defaults. Optional sections added later keep the
schema; only a change in the meaning or place of a field bumps it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

SCHEMA = 3
READABLE = (1, 2, 3)
STATUSES = ("ok", "oom", "over_budget", "diverged", "unsupported", "error")
# Schemas 1 and 2: the only task was retrieval, its metrics held as these keys of `metrics`
# (and of `metrics.folds`), its primary metric rsum, and what it ranked as images and captions.
LEGACY_TASK, LEGACY_PRIMARY = "retrieval", "rsum"
LEGACY_METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


@dataclass
class Run:
    """What ran, and how it ended."""

    suite: str  # the suite's name
    suite_version: int  # the suite file's version
    suite_hash: str  # the resolved suite less what cannot change a result: records share a table only when it is equal
    run_hash: str  # suite, method configuration and seed: the resume key
    method: str  # the registered method
    variant: str  # the method YAML's name (the file name)
    seed: int  # the run's seed
    overrides: list[str]  # the `--set` overrides, as given
    status: str  # one of STATUSES
    error: str | None  # why, where the status is not ok
    finished: str  # when the record was written (UTC, ISO 8601)
    memory_limit_bytes: int | None = None  # `--memory-limit`: the cap on each run's CUDA caching allocator


@dataclass
class Memory:
    """Peak memory, in bytes (docs/measurement.md says what each figure includes)."""

    source: str  # how it was measured: cuda, cpu-accounting or estimate
    train_peak_bytes: int  # the training window's peak (headline)
    eval_peak_bytes: int | None  # the evaluation phase's peak (none for estimates)
    train_reserved_peak_bytes: int | None  # CUDA: the caching allocator's reserved peak in the training window
    eval_reserved_peak_bytes: int | None  # CUDA: the same in evaluation
    train_breakdown: dict[str, int]  # the training peak by category (resident parameters, optimizer state, transient peak, ...)
    measured_steps: list[int]  # first and last step of the measured window
    nvml_train_peak_bytes: int | None = None  # CUDA: the process's used GPU memory as nvidia-smi shows it, sampled
    nvml_approximate: bool | None = None  # CUDA: the NVML figure is device-level, less the reading before the window
    nvml_unavailable: str | None = None  # CUDA: why there is no NVML figure
    target: str | None = None  # estimates: what the figure models (cuda, cpu)
    allocation_granularity_bytes: int | None = None  # estimates: the allocation rounding modelled
    budget_bytes: int | None = None  # estimates: the memory budget searched within
    validated: bool | None = None  # estimates: whether the figure's model has been checked on a GPU
    unvalidated: list[str] | None = None  # estimates: what is not yet checked


@dataclass
class Cost:
    """What the run cost: parameters, memory, time."""

    params_trainable: int  # trainable parameters (a shared tensor counted once)
    params_total: int  # all parameters
    trainable_state_bytes: int  # bytes of the trainable state a user stores per task
    memory: Memory
    attention_kernels: list[str] | None = None  # the attention operators the warm-up step dispatched to ("math": unfused)
    step_time_s_median: float | None = None  # median time of a timed step (copy to the device and the step)
    data_wait_s_median: float | None = None  # median time a timed step waited for its batch
    data_workers: int | None = None  # DataLoader worker processes
    timed_steps: list[int] = field(default_factory=list)  # first and last timed step
    train_samples_per_s: float | None = None  # training throughput, batch waits included
    eval_samples_per_s: float | None = None  # evaluation throughput (images and captions)
    train_s: float | None = None  # training wall time
    eval_s: float | None = None  # evaluation wall time
    wall_s: float | None = None  # the whole run's wall time
    runs_at_once: int | None = None  # the most runs of the sweep at once (its slots: --jobs, --devices); the times depend on it


@dataclass
class Folds:
    """The mean over equal folds of the evaluated split (COCO's 1K test)."""

    count: int  # folds
    evaluated: dict[str, int]  # what one fold holds (retrieval: images)
    values: dict[str, float | None]  # each metric's mean over the folds


@dataclass
class Metrics:
    """What the evaluation measured, as the suite's task defines it (`petlbench.tasks`: the
    metric names, their directions and the primary metric); a value is null only in a run
    that did not end ok (a non-finite value, `records.write_record`)."""

    task: str  # the suite's task ("retrieval")
    primary: str  # the metric that ranks methods (retrieval: rsum)
    values: dict[str, float | None]  # metric name -> value (retrieval: recalls in percent, and rSum out of 600)
    evaluated: dict[str, int]  # what was evaluated (retrieval: images, captions)
    folds: Folds | None = None  # with eval.folds > 1


@dataclass
class Budget:
    """What a memory budget decided for the run (`petlbench.budget`); every batch and
    schedule field is null where nothing fits (status ``over_budget``)."""

    bytes: int  # the budget
    target: str  # what the estimate behind the choice modelled: cpu (the CPU accounting, exact) or cuda
    headroom_bytes: int  # kept out of the budget (CUDA: the context and the allocator's slack)
    schedule: str  # equal_samples or equal_steps (`budget.schedule`)
    lr_scaling: str  # none, sqrt or linear (`budget.lr_scaling`)
    validated: bool  # whether the estimate behind the choice has been checked on this kind of device
    unvalidated: list[str]  # what is not yet checked
    batch_size: int | None = None  # the chosen training batch
    eval_batch_size: int | None = None  # the chosen evaluation batch
    steps: int | None = None  # training steps at that batch
    warmup_steps: int | None = None
    grad_checkpointing: bool | None = None  # whether activation checkpointing was switched on to fit
    lr: float | None = None  # the learning rate used (after `lr_scaling`)
    samples: int | None = None  # training samples seen: steps x batch
    estimated_train_peak_bytes: int | None = None  # at the chosen batch (over budget: at the minimum batch)
    estimated_eval_peak_bytes: int | None = None  # at the chosen evaluation batch
    reason: str | None = None  # why nothing fits
    exceeded: list[str] = field(default_factory=list)  # measured memory figures above the budget (a defect on the CPU)


@dataclass
class Weights:
    """What the backbone was loaded from (`petlbench.models.loader`): every weight the model
    needs came from these files, except those listed as new."""

    folder: str  # the model folder, resolved
    files: list[str]  # the weight files read (resolved paths)
    new: list[str]  # weights no file held, started from the run's seed (a ResNet + BERT pair's joint heads without heads.safetensors)


@dataclass
class Record:
    """One (variant, seed) of a sweep, or one estimate."""

    schema: int  # SCHEMA when written
    run: Run
    config: dict[str, Any]  # the fully resolved suite ("suite") and method configuration ("method")
    trainable_rule: dict[str, str] | None  # whether the projections (head) and the logit scale (temperature) trained
    metrics: Metrics | None  # none for estimates and runs that did not finish
    cost: Cost | None  # none for runs that did not finish
    env: dict[str, Any]  # provenance: git commit, package versions, device, threads, CUDA settings
    budget: Budget | None = None  # runs under `--budget`: what the budget decided
    weights: Weights | None = None  # runs: what the backbone was loaded from (absent in estimates and earlier records)


SECTIONS = {"run": Run, "cost": Cost, "memory": Memory, "metrics": Metrics, "folds": Folds, "budget": Budget, "weights": Weights}


class OffSchema(ValueError):
    """A record that is not what `Record` says, with where."""


def _check(value: Any, tp: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) not in args:
                raise OffSchema(f"{where} is null")
            return
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(value, option, where)
            except OffSchema as exc:
                errors.append(exc)
        raise errors[0]
    if tp is type(None):
        if value is not None:
            raise OffSchema(f"{where} is {type(value).__name__}, not null")
        return
    if dataclasses.is_dataclass(tp):
        check_fields(value, tp, where)
        return
    if origin is list:
        if not isinstance(value, list):
            raise OffSchema(f"{where} is {type(value).__name__}, not a list")
        for i, item in enumerate(value):
            _check(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise OffSchema(f"{where} is {type(value).__name__}, not an object")
        for key, item in value.items():
            _check(item, args[1], f"{where}.{key}")
        return
    ok = {
        int: type(value) is int,
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }[tp]
    if not ok:
        raise OffSchema(f"{where} is {type(value).__name__}, not {tp.__name__}")


def check_fields(data: Any, cls: type, where: str = "") -> None:
    """``data`` as the dataclass ``cls`` describes it: exactly its fields, each of its type;
    raises `OffSchema` naming the first field at fault."""
    if not isinstance(data, dict):
        raise OffSchema(f"{where or 'the record'} is {type(data).__name__}, not an object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - set(fields)):
        raise OffSchema(f"{where + '.' if where else ''}{unknown[0]} is not a field of {cls.__name__}")
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise OffSchema(f"{path} is missing")
            continue
        _check(data[name], hints[name], path)


def _legacy_metrics(metrics: Any) -> Any:
    """Schema-2 ``metrics`` in schema 3's form (anything else as it is, for `_check` to judge)."""
    if not isinstance(metrics, dict):
        return metrics
    for where, section, keys in (
        ("metrics", metrics, (*LEGACY_METRICS, "images", "captions")),
        ("metrics.folds", metrics.get("folds"), ("count", "images", *LEGACY_METRICS)),
    ):
        if isinstance(section, dict) and (missing := [key for key in keys if key not in section]):
            raise OffSchema(f"{where}.{missing[0]} is missing")
    legacy = {key: metrics[key] for key in LEGACY_METRICS if key in metrics}
    counts = {key: metrics[key] for key in ("images", "captions") if key in metrics}
    rest = {key: value for key, value in metrics.items() if key not in legacy and key not in counts and key != "folds"}
    out = {"task": LEGACY_TASK, "primary": LEGACY_PRIMARY, "values": legacy, "evaluated": counts, **rest}
    if (folds := metrics.get("folds")) is not None:
        out["folds"] = folds
        if isinstance(folds, dict):
            out["folds"] = {
                "count": folds.get("count"),
                "evaluated": {key: folds[key] for key in ("images",) if key in folds},
                "values": {key: folds[key] for key in LEGACY_METRICS if key in folds},
                **{key: value for key, value in folds.items() if key not in ("count", "images", *LEGACY_METRICS)},
            }
    return out


def check(data: Any) -> dict[str, Any]:
    """``data`` as a schema-3 record (one of schema 1 or 2 read as a retrieval record,
    `_legacy_metrics`); raises `OffSchema` naming the first field at fault. The rules across
    fields: a record's status is one of STATUSES, an ok run has its cost and, unless it is
    an estimate, its metrics, every one of them a number, the primary one among them."""
    if not isinstance(data, dict):
        raise OffSchema(f"a JSON {type(data).__name__}, not a record object")
    if data.get("schema") not in READABLE:
        raise OffSchema(f"schema {data.get('schema')!r}, not one of {', '.join(map(str, READABLE))}")
    if data["schema"] < 3 and data.get("metrics") is not None:
        data = {**data, "metrics": _legacy_metrics(data["metrics"])}
    check_fields(data, Record, "")
    run = data["run"]
    if run["status"] not in STATUSES:
        raise OffSchema(f"run.status {run['status']!r} is not one of {', '.join(STATUSES)}")
    if run["status"] == "ok":
        if data["cost"] is None:
            raise OffSchema("an ok run without cost")
        metrics = data["metrics"]
        if metrics is None and data["cost"]["memory"]["source"] != "estimate":
            raise OffSchema("an ok run without metrics")
        if metrics is not None and (missing := [m for m, v in metrics["values"].items() if v is None]):
            raise OffSchema(f"an ok run with metrics.values.{missing[0]} null")
    if data["metrics"] is not None and data["metrics"]["primary"] not in data["metrics"]["values"]:
        raise OffSchema(f"metrics.primary {data['metrics']['primary']!r} is not among metrics.values")
    if data["cost"] is not None and data["cost"]["params_total"] < 1:
        raise OffSchema("cost.params_total is below 1")
    return {**data, "schema": SCHEMA}


def fields_of(cls: type) -> list[str]:
    """The field names of a section, in order: what docs/measurement.md's record table lists."""
    return [f.name for f in dataclasses.fields(cls)]
