"""A record folder shared by several processes: locks (O_EXCL files holding host:pid), the
clean-up of dead writers' temporary files, and the manifest that keeps a folder to one
sweep. Concurrent and interrupted runs as real processes: no run twice, no record lost,
nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from petlbench import faults, folder, records
from tests.conftest import default_sigint, tiny_args

HOST = socket.gethostname()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_lock_is_held_once_and_released_by_its_holder(tmp_path):
    lock = folder.Lock(tmp_path, "full--seed0")
    assert lock.acquire() is None and lock.path.read_text().strip() == folder.owner()
    assert folder.Lock(tmp_path, "full--seed0").acquire() == folder.owner()  # held: a second acquire names the holder
    lock.release()
    assert not lock.path.exists()


def test_a_live_holder_keeps_its_lock_and_a_dead_ones_is_taken_over(tmp_path, live_pid, dead_pid):
    lock = folder.Lock(tmp_path, "x")
    lock.path.write_text(f"{HOST}:{live_pid}\n")
    assert lock.acquire() == f"{HOST}:{live_pid}"
    lock.path.write_text(f"{HOST}:{dead_pid}\n")
    assert lock.acquire() is None and lock.path.read_text().strip() == folder.owner()
    lock.path.write_text(f"{HOST}:{dead_pid}\n")
    lock.release()  # not ours: left alone
    assert lock.path.exists()


def test_a_lock_is_complete_when_it_appears_and_leaves_no_file_behind(tmp_path):
    lock = folder.Lock(tmp_path, "x")
    assert lock.acquire() is None
    assert [p.name for p in tmp_path.iterdir()] == [".x.lock"] and lock.path.read_text() == folder.owner() + "\n"


def test_a_stale_lock_being_broken_by_a_live_process_is_left_to_it(tmp_path, live_pid, dead_pid):
    lock = folder.Lock(tmp_path, "x")
    lock.path.write_text(f"{HOST}:{dead_pid}\n")
    (tmp_path / ".x.lock.break.lock").write_text(f"{HOST}:{live_pid}\n")  # another process is breaking it
    assert lock.acquire() == f"{HOST}:{dead_pid}" and lock.path.read_text().strip() == f"{HOST}:{dead_pid}"
    (tmp_path / ".x.lock.break.lock").write_text(f"{HOST}:{dead_pid}\n")  # ... and died doing so
    assert lock.acquire() is None and lock.path.read_text().strip() == folder.owner()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.lock"]


def test_a_lock_on_another_host_is_left_alone(tmp_path):
    lock = folder.Lock(tmp_path, "x")
    lock.path.write_text("some-other-host.example:1\n")
    assert lock.acquire() == "some-other-host.example:1"


def test_only_the_temporary_files_of_dead_writers_are_removed(tmp_path, live_pid, dead_pid):
    names = {
        "dead": f".full--seed0.json~{HOST}~{dead_pid}~abc.tmp",
        "live": f".lora--seed0.json~{HOST}~{live_pid}~abc.tmp",
        "other": ".lst--seed0.json~elsewhere.example~1~abc.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("{")
    assert [p.name for p in folder.clean_temporaries(tmp_path)] == [names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["other"]])


def test_a_records_temporary_file_names_its_writer(tmp_path):
    prefix = records.temporary_prefix(tmp_path / "full--seed0.json")
    assert prefix == f".full--seed0.json~{HOST}~{os.getpid()}~"


# --------------------------------------------------------------------------- processes


def _run(out, *extra, env=None):
    argv = [sys.executable, "-m", "petlbench.cli", "run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(out), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}, preexec_fn=default_sigint)


def _leftovers(out):
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".tmp", ".lock")) or "~stale~" in p.name)


def _complete(out, variants):
    loaded = records.load(out)
    assert not loaded.skipped and _leftovers(out) == []
    assert [(r["run"]["variant"], r["run"]["status"]) for r in loaded.records] == [(v, "ok") for v in sorted(variants)]


GRID = ["--methods", "linear,bitfit", *tiny_args()]


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
@pytest.mark.slow
def test_a_signal_abandons_the_run_leaves_nothing_behind_and_resume_completes(tmp_path, signame, code):
    out = tmp_path / "out"
    done = _run(out, *GRID, env={faults.ENV: f"run.warmup:{signame}:bitfit"})
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"petlbench: interrupted by {signame} during bitfit seed 0: 1 of 2 runs finished, records in {out}; "
        "run the same command again to resume (finished runs are skipped)"
    )
    assert _leftovers(out) == [] and [r["run"]["variant"] for r in records.load(out).records] == ["linear"]
    resumed = _run(out, *GRID)
    assert resumed.returncode == 0 and "linear seed 0: already done" in resumed.stdout
    _complete(out, ["linear", "bitfit"])


@pytest.mark.slow
def test_kill_9_while_writing_a_record_is_cleaned_up_on_resume(tmp_path):
    out = tmp_path / "out"
    done = _run(out, *GRID, env={faults.ENV: "record.write:SIGKILL:bitfit"})
    assert done.returncode == -9
    left = _leftovers(out)
    assert len(left) == 2 and left[0].startswith(".bitfit--seed0.json~") and left[1] == ".bitfit--seed0.lock"
    resumed = _run(out, *GRID)
    assert resumed.returncode == 0, resumed.stderr
    assert "left by a writer that is gone" in resumed.stderr and "linear seed 0: already done" in resumed.stdout
    _complete(out, ["linear", "bitfit"])


@pytest.mark.slow
def test_two_processes_on_one_grid_never_run_the_same_run(tmp_path):
    out = tmp_path / "out"
    grid = ["--methods", "linear,bitfit,partial,lora", *tiny_args()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "petlbench.cli", "run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(out), *grid],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    ran = [line.split(":")[0].split("] ")[1] for text in outputs for line in text.splitlines() if ": ok in " in line]
    assert sorted(ran) == sorted(f"{v} seed 0" for v in ("linear", "bitfit", "partial", "lora"))  # each exactly once
    _complete(out, ["linear", "bitfit", "partial", "lora"])


@pytest.mark.slow
def test_another_suite_or_method_configuration_in_a_used_folder_is_refused(cli, tmp_path):
    out = tmp_path / "out"
    assert cli("run", "--suite", "vl-retrieval", "--output", str(out), "--methods", "linear", *tiny_args())[0] == 0
    manifest = json.loads((out / records.MANIFEST).read_text())
    assert set(manifest["runs"]) == {"linear--seed0"}
    # more runs of the same sweep join the folder
    assert cli("run", "--suite", "vl-retrieval", "--output", str(out), "--methods", "linear", "--seeds", "1", *tiny_args())[0] == 0
    assert set(json.loads((out / records.MANIFEST).read_text())["runs"]) == {"linear--seed0", "linear--seed1"}
    code, _, err = cli("run", "--suite", "vl-retrieval", "--output", str(out), "--methods", "linear", *tiny_args("data.test_images=10"))
    assert code == 2 and "differing in data.test_images (12 vs 10)" in err and "use another --output" in err
    code, _, err = cli(
        "run", "--suite", "vl-retrieval", "--output", str(out), "--methods", "linear", "--dry-run", *tiny_args("method.lr=1")
    )
    assert code == 2 and "linear--seed0 was planned with another method configuration" in err


@pytest.mark.slow
def test_shards_must_split_the_same_grid(cli, tmp_path):
    out = tmp_path / "out"
    grid = ["--suite", "vl-retrieval", "--output", str(out), "--seeds", "0", *tiny_args()]
    assert cli("run", *grid, "--methods", "linear,bitfit", "--shard", "0/2")[0] == 0
    code, _, err = cli("run", *grid, "--methods", "linear", "--shard", "1/2", "--dry-run")
    assert code == 2 and "every shard must be started with the same --variants and --seeds" in err
    assert cli("run", *grid, "--methods", "linear,bitfit", "--shard", "1/2")[0] == 0
    _complete(out, ["linear", "bitfit"])


@pytest.mark.slow
def test_two_processes_with_different_suites_cannot_share_a_folder(tmp_path):
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "petlbench.cli",
        "run",
        "--suite",
        "vl-retrieval",
        "--device",
        "cpu",
        "--output",
        str(out),
        "--methods",
        "linear",
    ]
    procs = [
        subprocess.Popen([*argv, *tiny_args(f"train.steps={steps}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for steps in (4, 5)
    ]
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    assert sorted(proc.returncode for proc in procs) == [0, 2], errors
    loser = errors[[proc.returncode for proc in procs].index(2)]
    assert "differing in train.steps" in loser and "use another --output" in loser
    (record,) = records.load(out).records
    assert record["config"]["suite"]["train"]["steps"] == json.loads((out / records.MANIFEST).read_text())["suite_config"]["train"]["steps"]


@pytest.mark.slow
def test_a_folder_of_records_from_before_manifests_is_adopted(cli, tmp_path):
    out = tmp_path / "out"
    assert cli("run", "--suite", "vl-retrieval", "--output", str(out), "--methods", "linear", *tiny_args())[0] == 0
    (out / records.MANIFEST).unlink()
    code, _, err = cli("run", "--suite", "vl-retrieval", "--output", str(out), "--methods", "linear", *tiny_args("train.steps=5"))
    assert code == 2 and "differing in train.steps (4 vs 5)" in err
    code, out_text, _ = cli("run", "--suite", "vl-retrieval", "--output", str(out), "--methods", "linear", *tiny_args())
    assert code == 0 and "already done" in out_text and (out / records.MANIFEST).exists()
