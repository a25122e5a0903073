"""Result records: one JSON file per (variant, seed), written atomically, with provenance,
and read back through one reader that says what it skips.

Tables and plots are built from these files only, never from live objects.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from petlbench import faults
from petlbench.config import PROJECT_ROOT, ConfigError, short
from petlbench.measure.kernels import cuda_settings
from petlbench.measure.nvml import driver_version

SCHEMA = 1
STATUSES = ("ok", "oom", "diverged", "unsupported", "error")
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
# A record is a few kilobytes; a file this large is not one.
MAX_RECORD_BYTES = 16 << 20
# The suffix of a record file; other files in a folder are not records.
SUFFIX = ".json"
# The file in a record folder that is not a record: the suite and grid the folder holds (`petlbench.folder`).
MANIFEST = "petlbench-manifest.json"


def record_path(directory: Path, variant: str, seed: int) -> Path:
    return Path(directory) / f"{variant}--seed{seed}{SUFFIX}"


def temporary_prefix(path: Path) -> str:
    """The name start of ``path``'s temporary files: the writer's host and pid in it, so that
    a resume removes only the files of writers that are gone (`petlbench.folder`)."""
    return f".{path.name}~{socket.gethostname()}~{os.getpid()}~"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: a reader (or an
    interrupted sweep) sees the old file or the new one, never half of one. The file is
    readable like any other the user writes (0644 under the usual umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        faults.inject("record.write", record.get("run", {}).get("variant") if isinstance(record.get("run"), dict) else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by None, and where each one was (as
    dotted paths): JSON has no NaN, and a record must still be written."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "."]
    if isinstance(value, dict):
        pairs = [(key, finite(v, f"{where}.{key}" if where else str(key))) for key, v in value.items()]
        return {key: clean for key, (clean, _) in pairs}, [p for _, (_, paths) in pairs for p in paths]
    if isinstance(value, (list, tuple)):
        items = [finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [clean for clean, _ in items], [p for _, paths in items for p in paths]
    return value, []


class UnreadableRecord(Exception):
    """A file in a record folder that is not a valid record: the reason."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} is beyond the float range")
    return number


# The figures views read from a record's `cost` and `cost.memory`: each a number where present.
COST_NUMBERS = (
    "params_trainable",
    "params_total",
    "trainable_state_bytes",
    "step_time_s_median",
    "data_wait_s_median",
    "train_samples_per_s",
    "eval_samples_per_s",
    "train_s",
    "eval_s",
    "wall_s",
)
MEMORY_NUMBERS = ("train_peak_bytes", "eval_peak_bytes", "train_reserved_peak_bytes", "eval_reserved_peak_bytes", "nvml_train_peak_bytes")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _figures_problem(record: dict) -> str | None:
    """Why a figure some view reads has the wrong type (None where all are numbers, or absent)."""
    run = record["run"]
    if type(run.get("suite_version")) is not int:
        return f"run.suite_version is {short(run.get('suite_version'))}, not an integer"
    if not isinstance(run.get("overrides", []), list) or not isinstance(run.get("error"), (str, type(None))):
        return "run.overrides or run.error has the wrong type"
    cost, metrics = record.get("cost"), record.get("metrics")
    if cost is not None:
        if not isinstance(cost, dict):
            return "cost is not an object"
        memory = cost.get("memory")
        if not isinstance(memory, (dict, type(None))):
            return "cost.memory is not an object"
        figures = [(f"cost.{k}", cost.get(k)) for k in COST_NUMBERS]
        if memory is not None:
            if not isinstance(memory.get("source"), str):
                return f"cost.memory.source is {short(memory.get('source'))}, not a name"
            breakdown = memory.get("train_breakdown") or {}
            if not isinstance(breakdown, dict):
                return "cost.memory.train_breakdown is not an object"
            figures += [(f"cost.memory.{k}", memory.get(k)) for k in MEMORY_NUMBERS]
            figures += [(f"cost.memory.train_breakdown.{k}", v) for k, v in breakdown.items()]
        if isinstance(cost.get("params_total"), int) and cost["params_total"] < 1:
            return "cost.params_total is below 1"
    else:
        figures = []
    if metrics is not None:
        if not isinstance(metrics, dict):
            return "metrics is not an object"
        folds = metrics.get("folds") or {}
        if not isinstance(folds, dict):
            return "metrics.folds is not an object"
        figures += [(f"metrics.{k}", metrics.get(k)) for k in METRICS] + [(f"metrics.folds.{k}", folds.get(k)) for k in METRICS]
    wrong = [where for where, value in figures if value is not None and not _number(value)]
    return f"{wrong[0]} is not a number" if wrong else None


def problem(record: Any) -> str | None:
    """Why ``record`` is not a record of this schema (None when it is one): the checks every
    reader relies on, so that no view meets a half-formed record."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record object"
    if record.get("schema") != SCHEMA:
        return f"schema {short(record.get('schema'))}, not {SCHEMA}"
    run = record.get("run")
    if not isinstance(run, dict):
        return "no 'run' section"
    for key in ("suite", "suite_hash", "run_hash", "variant", "method", "status"):
        if not isinstance(run.get(key), str) or not run[key]:
            return f"run.{key} is {short(run.get(key))}, not a name"
    if type(run.get("seed")) is not int:
        return f"run.seed is {short(run.get('seed'))}, not an integer"
    if run["status"] not in STATUSES:
        return f"run.status {short(run['status'])} is not one of {', '.join(STATUSES)}"
    if not isinstance(record.get("config"), dict) or not isinstance(record["config"].get("suite"), dict):
        return "no resolved suite in 'config'"
    if not isinstance(record.get("env"), dict):
        return "no 'env' section"
    if why := _figures_problem(record):
        return why
    if run["status"] != "ok":
        return None
    cost = record.get("cost")
    memory = cost.get("memory") if isinstance(cost, dict) else None
    if not isinstance(memory, dict) or type(memory.get("train_peak_bytes")) is not int or memory["train_peak_bytes"] < 0:
        return "an ok run without cost.memory.train_peak_bytes"
    for key in ("params_trainable", "params_total"):
        if type(cost.get(key)) is not int:
            return f"an ok run without cost.{key}"
    if memory.get("source") == "estimate":  # estimates have no metrics
        return None
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return "an ok run without metrics"
    missing = [name for name in METRICS if not isinstance(metrics.get(name), (int, float)) or isinstance(metrics[name], bool)]
    return f"an ok run without the metric {missing[0]}" if missing else None


def read(path: Path) -> dict[str, Any]:
    """The record at ``path``; raises `UnreadableRecord` with the reason when the file is
    not one (missing, too large, not UTF-8 JSON, off-schema)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise UnreadableRecord(f"{path.stat().st_size:,} bytes, larger than a record can be")
        record = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constants, parse_float=_finite_float)
    except FileNotFoundError:
        raise UnreadableRecord("no such file") from None
    except IsADirectoryError:
        raise UnreadableRecord("a folder, not a file") from None
    except PermissionError:
        raise UnreadableRecord("not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise UnreadableRecord(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise UnreadableRecord("nested too deeply to be a record") from None
    except ValueError as exc:  # json.JSONDecodeError included
        raise UnreadableRecord(f"not valid JSON: {exc}") from None
    if why := problem(record):
        raise UnreadableRecord(f"off-schema: {why}")
    return record


@dataclass
class Loaded:
    """The records of a folder and the files skipped, each with the reason."""

    records: list[dict[str, Any]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def candidates(directory: Path) -> list[Path]:
    """The files of ``directory`` that hold (or should hold) records: ``*.json``, the
    folder's manifest aside (subfolders are not read: one folder is one sweep)."""
    return sorted(p for p in Path(directory).glob(f"*{SUFFIX}") if p.name != MANIFEST)


def load(directory: Path) -> Loaded:
    """Every record in ``directory``, sorted by variant and seed, and what was skipped."""
    loaded = Loaded([])
    for path in candidates(directory):
        try:
            loaded.records.append(read(path))
        except UnreadableRecord as exc:
            loaded.skipped.append((path, str(exc)))
    loaded.records.sort(key=lambda r: (r["run"]["variant"], r["run"]["seed"]))
    return loaded


def read_all(directory: Path, strict: bool = False) -> list[dict[str, Any]]:
    """The records of ``directory`` for a report, a plot or a comparison: every skipped
    file is named on stderr with its reason, and counted; ``strict``: any skipped file is
    an error. An error too where no record is left."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such folder")
    loaded = load(directory)
    for path, why in loaded.skipped:
        print(f"petlbench: skipped {path}: {why}", file=sys.stderr)
    if loaded.skipped:
        print(f"petlbench: {directory}: {len(loaded.records)} records read, {len(loaded.skipped)} files skipped", file=sys.stderr)
        if strict:
            raise ConfigError(f"{directory}: {len(loaded.skipped)} files are not valid records (named above; --strict)")
    if not loaded.records:
        raise ConfigError(f"{directory}: no result records (*.json with schema {SCHEMA})")
    return loaded.records


VERSIONED = ("torch", "transformers", "peft")


def is_done(record: dict[str, Any] | None, run_hash: str, device: torch.device) -> bool:
    """A re-run skips a run only when its record is `ok` for the same run hash, measured on
    the same kind of device with the same package versions (exact figures depend on both)."""
    if record is None or record["run"]["run_hash"] != run_hash or record["run"]["status"] != "ok":
        return False
    env = record["env"]
    return env.get("device") == device.type and all(env.get(p) == _version(p) for p in VERSIONED)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device, query_device: bool = True) -> dict[str, Any]:
    """Provenance: code version, package versions, device. On CUDA, ``query_device`` adds
    the GPU, CUDA, driver and the settings that change figures (`cuda_settings`): asked in
    the process that ran (the sweep's own process never touches the GPU)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    env: dict[str, Any] = {
        "git_commit": commit,
        "dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        **{pkg: _version(pkg) for pkg in ("torch", "transformers", "peft", "petlbench")},
        "device": device.type,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda" and not query_device:
        env["device_name"] = None
    elif device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["driver"] = driver_version()
        env.update(cuda_settings())
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env
