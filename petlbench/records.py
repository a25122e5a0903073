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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from petlbench import config as cfgmod
from petlbench import faults, jsonfile, schema
from petlbench.config import PROJECT_ROOT, ConfigError, OutputError, SuiteConfig
from petlbench.measure.kernels import cuda_settings
from petlbench.measure.memory import PhasePeak
from petlbench.measure.nvml import driver_version

if TYPE_CHECKING:
    from petlbench.variants import Variant

SCHEMA = schema.SCHEMA
# A record is a few kilobytes; a file this large is not one.
MAX_RECORD_BYTES = 16 << 20
# The suffix of a record file; other files in a folder are not records.
SUFFIX = ".json"
# The file in a record folder that is not a record: the suite and grid the folder holds (`petlbench.folder`).
MANIFEST = "petlbench-manifest.json"


def memory_section(
    source: str, train_peak: PhasePeak, eval_peak: PhasePeak | None, measured_steps: list[int], **more: Any
) -> dict[str, Any]:
    """A record's ``cost.memory`` (`schema.Memory`) from the phase peaks a meter reported:
    the one place a run and an estimate build it; ``more``: the fields of their own (NVML
    figures, an estimate's target and validation)."""
    return {
        "source": source,
        "train_peak_bytes": train_peak.peak_bytes,
        "eval_peak_bytes": eval_peak.peak_bytes if eval_peak else None,
        "train_reserved_peak_bytes": train_peak.reserved_peak_bytes,
        "eval_reserved_peak_bytes": eval_peak.reserved_peak_bytes if eval_peak else None,
        "train_breakdown": train_peak.breakdown,
        "measured_steps": measured_steps,
        **more,
    }


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


def write_text_atomic(path: Path, text: str, variant: str | None = None) -> None:
    """``text`` through `write_file_atomic`."""
    write_file_atomic(path, lambda f: f.write(text.encode()), variant)


def write_file_atomic(path: Path, write: Callable[[BinaryIO], Any], variant: str | None = None) -> None:
    """What ``write`` writes into a file object, to a temporary file in the same folder,
    then renamed: a reader (or an interrupted sweep) sees the old file or the new one,
    never half of one (a record, a report, a figure). The file is readable like any other
    the user writes (0644 under the usual umask). Raises `OutputError` where it cannot be
    written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        faults.inject("record.write", variant)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """``record`` as JSON through `write_text_atomic` (no NaN: JSON has none)."""
    text = json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_text_atomic(path, text, record.get("run", {}).get("variant") if isinstance(record.get("run"), dict) else None)


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


def make_record(
    suite: SuiteConfig,
    variant: Variant,
    seed: int,
    status: str,
    error: str | None,
    outcome: Any,
    env: dict[str, Any],
    wall_s: float,
    overrides: list[str] = (),
    memory_limit: int | None = None,
    budget: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sections of the record of one (variant, seed) (`petlbench.schema`): what a run
    measured (``outcome``: a `train.RunOutcome`, None where it did not finish), or an
    estimate; ``budget``: what a memory budget decided (the section is absent without one)."""
    record = {
        "schema": SCHEMA,
        "run": {
            "suite": suite.name,
            "suite_version": suite.version,
            "suite_hash": cfgmod.suite_hash(suite),
            "run_hash": cfgmod.run_hash(suite, variant, seed),
            "method": variant.method,
            "variant": variant.name,
            "seed": seed,
            "overrides": list(overrides),
            "status": status,
            "error": error,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "memory_limit_bytes": memory_limit,
        },
        "config": {"suite": cfgmod.to_dict(suite), "method": {"name": variant.method, **cfgmod.to_dict(variant.config)}},
        "trainable_rule": outcome.trainable_rule if outcome else None,
        "metrics": outcome.metrics if outcome else None,
        "cost": {**outcome.cost, "wall_s": wall_s} if outcome else None,
        "env": env,
    }
    if budget is not None:
        record["budget"] = budget
    if outcome is not None and outcome.weights is not None:
        record["weights"] = outcome.weights
    return record


def write_record(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The one writer: ``record`` checked against the schema and written atomically; what it
    became is returned. Non-finite numbers become null, and an ``ok`` run that held one
    becomes ``diverged`` (in its metrics) or ``error``, saying where; a record that does not
    fit the schema or JSON is replaced by its run section with the reason. Never a half
    record: a write that fails leaves the old file (or none) and raises `OutputError`."""
    record, nonfinite = finite(record)
    if nonfinite and record["run"]["status"] == "ok":
        status = "diverged" if any(p.startswith("metrics") for p in nonfinite) else "error"
        record["run"].update(status=status, error=f"non-finite values, recorded as null: {', '.join(nonfinite[:5])}")
    try:
        try:
            record = schema.check(json.loads(json.dumps(record, allow_nan=False)))
        except (TypeError, ValueError) as exc:  # a value JSON cannot hold, or a record off the schema: keep the run and why
            run = {**record["run"], "status": "error", "error": f"the record could not be written as it was: {exc}"}
            minimal = {"schema": SCHEMA, "run": run, "config": record["config"], "trainable_rule": None, "metrics": None, "cost": None}
            record = schema.check(json.loads(json.dumps({**minimal, "env": record["env"]}, default=str)))
        write_atomic(path, record)
    except OSError as exc:  # a check's own I/O
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return record


class UnreadableRecord(Exception):
    """A file in a record folder that is not a valid record: the reason."""


def read(path: Path) -> dict[str, Any]:
    """The record at ``path``; raises `UnreadableRecord` with the reason when the file is
    not one (missing, too large, not UTF-8 JSON, a key twice, off-schema)."""
    try:
        record = jsonfile.read(Path(path), MAX_RECORD_BYTES, "record")
    except jsonfile.Unreadable as exc:
        raise UnreadableRecord(str(exc)) from None
    try:
        return schema.check(record)
    except schema.OffSchema as exc:
        raise UnreadableRecord(f"off-schema: {exc}") from None


@dataclass
class Loaded:
    """The records of a folder (with the file of each) and the files skipped, each with
    the reason; a file reached twice (a link to another) is read once."""

    records: list[dict[str, Any]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # the file of each record, in order


def candidates(directory: Path) -> list[Path]:
    """The files of ``directory`` that hold (or should hold) records: ``*.json``, the
    folder's manifest aside (subfolders are not read: one folder is one sweep)."""
    return sorted(p for p in Path(directory).glob(f"*{SUFFIX}") if p.name != MANIFEST)


def load(directory: Path) -> Loaded:
    """Every record in ``directory``, sorted by variant and seed, and what was skipped;
    each file once, by its real path (a link to a file already read is that file)."""
    found: list[tuple[Path, dict[str, Any]]] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for path in candidates(directory):
        if (real := path.resolve()) in seen:
            continue
        seen.add(real)
        try:
            found.append((path, read(path)))
        except UnreadableRecord as exc:
            skipped.append((path, str(exc)))
    found.sort(key=lambda pr: (pr[1]["run"]["variant"], pr[1]["run"]["seed"], pr[0]))
    return Loaded([r for _, r in found], skipped, [p for p, _ in found])


def run_key(record: dict[str, Any]) -> tuple[str, str, int, str | None]:
    """What makes two records the same run: (suite hash, variant, seed) and how its memory
    was measured (a CUDA and a CPU record of one run are two measurements, not copies)."""
    run, cost = record["run"], record.get("cost") or {}
    return run["suite_hash"], run["variant"], run["seed"], cost.get("memory", {}).get("source")


def _named_as_its_run(path: Path, record: dict[str, Any]) -> bool:
    return path.name == record_path(Path(), record["run"]["variant"], record["run"]["seed"]).name


def one_per_run(found: list[tuple[Path, dict[str, Any]]], refuse: bool) -> list[dict[str, Any]]:
    """One record per run (`run_key`) of the (file, record) pairs ``found``: where several
    files hold one run, the one named as its run (else the first) is kept and the others
    are named on stderr, or, with ``refuse``, a `ConfigError` names them all. A record
    whose file name is not its run's is named too (an error with ``refuse``)."""
    by_run: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for path, record in found:
        by_run.setdefault(run_key(record), []).append((path, record))
    out, problems = [], []
    for (suite_hash, variant, seed, _), copies in by_run.items():
        copies.sort(key=lambda pr: not _named_as_its_run(*pr))
        if len(copies) > 1:
            files = ", ".join(str(path) for path, _ in copies)
            problems.append(f"{len(copies)} files hold the same run ({variant} seed {seed}, suite_hash {suite_hash}): {files}")
            if not refuse:
                print(f"petlbench: {problems[-1]}; only {copies[0][0]} is read", file=sys.stderr)
        for path, record in copies:
            if not _named_as_its_run(path, record):
                expected = record_path(Path(), variant, seed).name
                problems.append(f"{path}: its file name is not its run's ({expected})")
                if not refuse:
                    print(f"petlbench: {problems[-1]}", file=sys.stderr)
        out.append(copies[0][1])
    if refuse and problems:
        raise ConfigError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") + ": keep one file per run")
    return out


def _found(directory: Path, strict: bool) -> list[tuple[Path, dict[str, Any]]]:
    """The (file, record) pairs of ``directory``: every skipped file is named on stderr with
    its reason, and counted; ``strict``: any skipped file is an error. An error too where no
    record is left."""
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
        raise ConfigError(f"{directory}: no result records (*.json of schema {', '.join(map(str, schema.READABLE))})")
    return list(zip(loaded.files, loaded.records, strict=True))


def read_all(directory: Path, strict: bool = False, refuse_copies: bool | None = None) -> list[dict[str, Any]]:
    """The records of one folder for a report, a plot or a comparison, one per run
    (`one_per_run`: copies refused with ``refuse_copies``, default ``strict``)."""
    return one_per_run(_found(directory, strict), strict if refuse_copies is None else refuse_copies)


def sweep_folders(directories: list[Path]) -> list[Path]:
    """The record folders ``directories`` stand for, each once (by its real path): a folder
    that holds no record file itself but subfolders that do (the parent of a `run --budget`
    sweep, or of several sweeps) stands for those subfolders."""
    out, seen = [], set()
    for directory in map(Path, directories):
        sweeps = [directory]
        if directory.is_dir() and not candidates(directory):
            sweeps = sorted(sub for sub in directory.iterdir() if sub.is_dir() and candidates(sub)) or sweeps
        for sweep in sweeps:
            if (real := sweep.resolve()) not in seen:
                seen.add(real)
                out.append(sweep)
    return out


def read_folders(directories: list[Path], strict: bool = False) -> list[dict[str, Any]]:
    """The records of several folders (`sweep_folders`), one record per run across them
    all (`one_per_run`; copies are an error with ``strict``)."""
    return one_per_run([pair for sweep in sweep_folders(directories) for pair in _found(sweep, strict)], strict)


VERSIONED = ("torch", "transformers", "peft")


def is_done(record: dict[str, Any] | None, run_hash: str, device: torch.device, threads: int | None) -> bool:
    """A re-run skips a run only when its record is `ok` for the same run hash, measured on
    the same kind of device with the same package versions (exact figures depend on both)
    and, where the sweep sets its runs' ``threads`` (the CPU), with as many intra-op
    threads (its metrics depend on them)."""
    if record is None or record["run"]["run_hash"] != run_hash or record["run"]["status"] != "ok":
        return False
    env = record["env"]
    return (
        env.get("device") == device.type
        and all(env.get(p) == _version(p) for p in VERSIONED)
        and (threads is None or env.get("threads") == threads)
    )


def _git(*args: str) -> str | None:
    """Ask git about petlbench's checkout; None for an installed petlbench, whose folder may
    lie inside a repository that is not petlbench's (a user's project and its .venv)."""
    if not (PROJECT_ROOT / ".git").exists():  # a folder, or a file in a worktree
        return None
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
