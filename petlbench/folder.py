"""A sweep's output folder, which several processes may share (shards, a second terminal, a
SLURM array on NFS): the manifest that pins which suite and which run configurations the
folder holds, a lock per run so that no two processes run the same (variant, seed), and the
clean-up of temporary files left by writers that are gone.

Locks and the manifest's lock are files created with ``O_EXCL`` and holding
``host:pid`` — portable to NFS and Lustre, where ``flock`` is not reliable. A lock whose
process is gone (same host, no such pid) is taken over; one held on another host is left
alone (its process cannot be checked from here).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petlbench import config as cfgmod
from petlbench import jsonfile, records, schema
from petlbench.config import ConfigError, SuiteConfig
from petlbench.variants import Variant

if TYPE_CHECKING:
    from petlbench.plan import Shard

MANIFEST_SCHEMA = 1
MAX_MANIFEST_BYTES = 2**28  # a grid of many thousand runs, each pinned with its method configuration
# How long to wait for another process's hold on the manifest (it holds it for milliseconds).
MANIFEST_WAIT_S = 30.0


def owner() -> str:
    """This process, as lock files name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def alive(holder: str) -> bool | None:
    """Whether the process ``host:pid`` runs: None when it is on another host (unknowable here)."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def check_writable(folder: Path, keep: bool = True, option: str = "--output") -> None:
    """``folder`` is (or is made) a folder this process can write to, proven by writing and
    removing a file: what a dry run checks is what the run will do. Without ``keep``, the
    folders the proof made are removed again (a dry run leaves nothing behind). Raises
    `ConfigError` naming ``option`` and the folder."""
    folder = Path(folder)
    where = f"{option} {folder}"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{where}: exists and is not a folder")
    made = [p for p in [folder, *folder.parents] if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".petlbench-probe~{socket.gethostname()}~{os.getpid()}~x.tmp"  # `clean_temporaries` knows this form
        probe.write_text("probe\n")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be written ({exc.strerror or exc})") from None
    finally:
        if not keep:
            for path in made:
                with contextlib.suppress(OSError):  # another process's files are in it now: it stays
                    path.rmdir()


class Lock:
    """``folder/.NAME.lock`` held by this process: `acquire` returns None once held, else
    the holder's ``host:pid``; `release` removes the file if this process still holds it.

    The lock file appears complete or not at all: the holder's name is written to a file of
    its own, which is then hard-linked as the lock (a link fails where the lock exists, and
    is atomic on NFS as well). A lock whose holder is gone is broken under a second lock
    (``.NAME.lock.break``), after checking that the lock still names that holder, so that
    two processes breaking one stale lock at once cannot remove a fresh one."""

    def __init__(self, folder: Path, name: str, breakable: bool = True):
        self.path = Path(folder) / f".{name}.lock"
        self.breakable = breakable

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _create(self) -> bool:
        mine = self.path.with_name(f"{self.path.name}~{socket.gethostname()}~{os.getpid()}~new.tmp")  # `clean_temporaries` knows this form
        mine.write_text(owner() + "\n")
        try:
            os.link(mine, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive creation (the name follows at once)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(owner() + "\n")
            return True
        finally:
            mine.unlink(missing_ok=True)

    def acquire(self) -> str | None:
        for _ in range(3):  # a stale lock broken, then created again (another process may win that race)
            if self._create():
                return None
            holder = self._holder()
            if not holder or alive(holder) is not False:  # empty: only where links are not available, for an instant
                return holder or "another process"
            if not self.breakable:  # the breaking lock itself: its stale holder died within two system calls
                self.path.unlink(missing_ok=True)
                continue
            breaking = Lock(self.path.parent, f"{self.path.name[1:]}.break", breakable=False)
            if breaking.acquire() is not None:
                return holder  # another process is breaking it
            try:
                if self._holder() == holder:
                    self.path.unlink(missing_ok=True)
            finally:
                breaking.release()
        return self._holder() or "another process"

    def release(self) -> None:
        if self._holder() == owner():
            self.path.unlink(missing_ok=True)


def clean_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary record files whose writer is gone (same host, no such pid); a
    file of a live writer or of another host's is kept. Returns the removed files."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        parts = path.name.split("~")
        if len(parts) >= 4 and alive(f"{parts[-3]}:{parts[-2]}") is False:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _run_key(variant: str, seed: int) -> str:
    return records.record_path(Path(), variant, seed).stem


def _entries(suite: SuiteConfig, grid: list[tuple[Variant, int]]) -> dict[str, dict[str, Any]]:
    return {
        _run_key(v.name, s): {"run_hash": cfgmod.run_hash(suite, v, s), "method": {"name": v.method, **cfgmod.to_dict(v.config)}}
        for v, s in grid
    }


def _conflicts(
    folder: Path, manifest: dict[str, Any], suite: SuiteConfig, entries: dict[str, dict[str, Any]], shard: Shard | None
) -> list[str]:
    """Why the plan (``suite``, ``entries``) cannot share ``folder`` with what ``manifest``
    pins: another suite configuration, another configuration of a (variant, seed), or (for
    a shard) another grid than the one its sibling shards split, or another number of
    parts: shards of two grids, or of one grid cut two ways, would leave runs out."""
    if manifest["suite_hash"] != cfgmod.suite_hash(suite):
        why = cfgmod.suite_differences([manifest["suite_config"], cfgmod.to_dict(suite)])
        return [
            f"it holds suite {manifest['suite']} with suite_hash {manifest['suite_hash']}, this run's is {cfgmod.suite_hash(suite)} (differing in {why})"
        ]
    out = []
    for key, entry in entries.items():
        pinned = manifest["runs"].get(key)
        if pinned is not None and pinned["run_hash"] != entry["run_hash"]:
            old, new = pinned["method"], entry["method"]
            changed = ", ".join(f"{k} {old.get(k)} vs {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            out.append(
                f"{key} was planned with another method configuration ({changed or 'same values, another hash'}; folder vs this run)"
            )
    grid = manifest.get("shard_grid")
    if shard is not None and grid is not None and grid != list(entries):
        out.append(
            f"its shards split the grid {', '.join(grid[:4])}{' ...' if len(grid) > 4 else ''} ({len(grid)} runs), this shard's grid "
            f"has {len(entries)}: every shard must be started with the same --variants and --seeds"
        )
    count = manifest.get("shard_count")
    if shard is not None and count is not None and count != shard.count:
        out.append(f"its shards split the grid into {count} parts, this shard is {shard}: every shard must be started with the same N")
    return out


@dataclass
class PinnedRun:
    """A (variant, seed) the manifest pins: its run hash and method configuration."""

    run_hash: str
    method: dict[str, Any]


@dataclass
class Manifest:
    """What a record folder holds (`records.MANIFEST`): one suite configuration, the runs
    planned into it, and for shards the grid they split and into how many parts."""

    schema: int
    suite: str
    suite_hash: str
    suite_config: dict[str, Any]
    runs: dict[str, PinnedRun]
    shard_grid: list[str] | None = None
    shard_count: int | None = None


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder``'s manifest, None where it has none; `ConfigError` naming the file where it
    is unreadable or not of `Manifest`'s shape."""
    path = Path(folder) / records.MANIFEST
    if not os.path.lexists(path):
        return None
    try:
        manifest = jsonfile.read(path, MAX_MANIFEST_BYTES, "manifest")
    except jsonfile.Unreadable as exc:
        raise ConfigError(
            f"{path}: unreadable manifest ({exc}); it pins what the folder holds: restore it or use another --output"
        ) from None
    try:
        schema.check_fields(manifest, Manifest)
        if manifest["schema"] != MANIFEST_SCHEMA:
            raise schema.OffSchema(f"schema {manifest['schema']}")
    except schema.OffSchema as exc:
        raise ConfigError(
            f"{path}: not a petlbench manifest (schema {MANIFEST_SCHEMA}: {exc}); restore it or use another --output"
        ) from None
    return manifest


def _adopted(folder: Path, suite: SuiteConfig) -> dict[str, Any] | None:
    """A manifest for a folder of records written before manifests existed: their suite
    and run configurations, from the records themselves."""
    found = records.load(folder).records
    if not found:
        return None
    first = found[0]
    runs = {
        _run_key(r["run"]["variant"], r["run"]["seed"]): {"run_hash": r["run"]["run_hash"], "method": r["config"].get("method", {})}
        for r in found
    }
    hashes = {r["run"]["suite_hash"] for r in found}
    if len(hashes) > 1:
        raise ConfigError(
            f"{folder}: holds records of {len(hashes)} suite configurations ({', '.join(sorted(hashes))}): use another --output"
        )
    return {
        "schema": MANIFEST_SCHEMA,
        "suite": first["run"]["suite"],
        "suite_hash": first["run"]["suite_hash"],
        "suite_config": first["config"]["suite"],
        "runs": runs,
    }


def check_manifest(folder: Path, suite: SuiteConfig, grid: list[tuple[Variant, int]], shard: Shard | None = None) -> None:
    """Raise `ConfigError` (exit 2) when the plan disagrees with what ``folder`` holds; reads only."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    manifest = _read_manifest(folder) or _adopted(folder, suite)
    if manifest is not None and (conflicts := _conflicts(folder, manifest, suite, _entries(suite, grid), shard)):
        raise ConfigError(
            f"--output {folder}: {conflicts[0]}"
            + (f" (and {len(conflicts) - 1} more runs)" if len(conflicts) > 1 else "")
            + ": a folder holds one sweep, so its records never mix; use another --output"
        )


def update_manifest(folder: Path, suite: SuiteConfig, grid: list[tuple[Variant, int]], shard: Shard | None = None) -> None:
    """Check the plan against ``folder``'s manifest and add its runs (a shard: pin the grid
    its siblings must split), under the manifest's lock, so that two processes starting at
    once agree or one of them stops."""
    folder = Path(folder)
    lock = Lock(folder, records.MANIFEST)
    deadline = time.monotonic() + MANIFEST_WAIT_S
    while (holder := lock.acquire()) is not None:
        if time.monotonic() > deadline:
            raise ConfigError(f"--output {folder}: its manifest is held by {holder} (remove {lock.path} if no such process runs)")
        time.sleep(0.05)
    try:
        check_manifest(folder, suite, grid, shard)
        manifest = (
            _read_manifest(folder)
            or _adopted(folder, suite)
            or {
                "schema": MANIFEST_SCHEMA,
                "suite": suite.name,
                "suite_hash": cfgmod.suite_hash(suite),
                "suite_config": cfgmod.to_dict(suite),
                "runs": {},
            }
        )
        manifest["runs"].update(entries := _entries(suite, grid))
        if shard is not None:
            manifest.setdefault("shard_grid", list(entries))
            manifest.setdefault("shard_count", shard.count)
        records.write_atomic(folder / records.MANIFEST, manifest)
    finally:
        lock.release()


def runs_without_record(folders: list[Path]) -> tuple[dict[Path, list[str]], list[str]]:
    """For each record folder that has a manifest, the (variant, seed) runs it plans whose
    record is missing or unreadable ("linear--seed1"): a shard never started, a run lost;
    and why each manifest that cannot be read says nothing (what it plans is unknown)."""
    out, unreadable = {}, []
    for folder in folders:
        try:
            manifest = _read_manifest(folder)
        except ConfigError as exc:
            unreadable.append(str(exc))
            continue
        if manifest is None:
            continue
        missing = []
        for key in manifest["runs"]:
            try:
                records.read(Path(folder) / f"{key}{records.SUFFIX}")
            except records.UnreadableRecord:
                missing.append(key)
        if missing:
            out[Path(folder)] = missing
    return out, unreadable
