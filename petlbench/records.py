"""Result records: one JSON file per (variant, seed), written atomically, with provenance.

Tables and plots are built from these files only, never from live objects.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from petlbench.config import PROJECT_ROOT, ConfigError
from petlbench.measure.kernels import cuda_settings
from petlbench.measure.nvml import driver_version

SCHEMA = 1
STATUSES = ("ok", "oom", "diverged", "unsupported", "error")


def record_path(directory: Path, variant: str, seed: int) -> Path:
    return Path(directory) / f"{variant}--seed{seed}.json"


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: a reader (or an
    interrupted sweep) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every record in ``directory``, sorted by variant and seed. Subfolders are not read:
    one folder is one sweep, and two sweeps may hold the same (variant, seed)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such folder")
    found = [r for p in sorted(directory.glob("*.json")) if isinstance(r := read(p), dict) and r.get("schema") == SCHEMA]
    if not found:
        raise ConfigError(f"{directory}: no result records (*.json with schema {SCHEMA})")
    return sorted(found, key=lambda r: (r["run"]["variant"], r["run"]["seed"]))


VERSIONED = ("torch", "transformers", "peft")


def is_done(path: Path, run_hash: str, device: torch.device) -> bool:
    """A re-run skips a run only when its record is `ok` for the same run hash, measured on
    the same kind of device with the same package versions (exact figures depend on both)."""
    record = read(path)
    run = record.get("run") if isinstance(record, dict) else None
    if not isinstance(run, dict) or run.get("run_hash") != run_hash or run.get("status") != "ok":
        return False
    env = record.get("env") or {}
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
