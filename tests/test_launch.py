"""`petlbench run --launcher slurm`: the grid as a job array through submitit, end to end
under submitit's local executor, the SLURM array and its dependent report job as sbatch
files (a stand-in `sbatch` records them), and one-line errors."""

import os
import sys

import pytest

from petlbench import launch, records
from tests.conftest import tiny_args

GRID = ["--suite", "vl-retrieval", "--device", "cpu", "--variants", "linear,bitfit", "--seeds", "0", *tiny_args()]


@pytest.mark.slow
def test_the_array_runs_every_shard_into_one_folder_and_the_report_job_writes_the_report(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "CLUSTER", "local")
    out = tmp_path / "out"
    code, stdout, err = cli("run", *GRID, "--output", str(out), "--launcher", "slurm", "--slurm", "array=2,time=20")
    assert code == 0, err
    assert "submitted 2 tasks (job ids " in stdout and f"logs in {tmp_path / 'out.logs'}" in stdout
    assert sorted(p.name for p in out.glob("*--seed0.json")) == ["bitfit--seed0.json", "linear--seed0.json"]
    assert {r["run"]["status"] for r in records.read_all(out)} == {"ok"}
    assert (out / "report.md").exists() and (out / "memory_vs_rsum.png").exists()
    assert [p.name for p in out.glob(".*")] == []  # no lock, no temporary file
    logs = "".join(p.read_text() for p in (tmp_path / "out.logs").rglob("*.out"))
    assert "shard 0/2: 1 of 2 runs" in logs and "shard 1/2: 1 of 2 runs" in logs


FAKE_SBATCH = """#!/bin/sh
cat "$1" >> "{log}"
echo "Submitted batch job $(( $(grep -c '^#SBATCH --job-name' "{log}") + 4240 ))"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Stand-ins for `srun` (submitit looks for it) and `sbatch` (records what it is given);
    returns the record."""
    log = tmp_path / "sbatch.log"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text(FAKE_SBATCH.format(log=log))
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    for tool in ("sbatch", "srun"):
        (tmp_path / "bin" / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return log


def test_on_slurm_one_array_and_a_report_job_that_depends_on_it(cli, tmp_path, fake_slurm):
    """What `sbatch` is given (no cluster here)."""
    log = fake_slurm
    out = tmp_path / "out"
    code, stdout, err = cli(
        "run", *GRID, "--output", str(out), "--launcher", "slurm", "--slurm", "partition=gpu,gpus_per_task=1,array=2,time=90"
    )
    assert code == 0, err
    files = log.read_text().split("#!/bin/bash")[1:]
    assert len(files) == 2
    array, report = files
    assert "#SBATCH --array=0-1" in array and "#SBATCH --partition=gpu" in array and "#SBATCH --gpus-per-task=1" in array
    assert "#SBATCH --time=90" in array and "--dependency" not in array
    assert "#SBATCH --dependency=afterany:4241" in report and "--array" not in report
    assert "submitted 2 tasks (job ids 4241_0, 4241_1) and the report job 4242" in stdout
    assert not list(out.glob("*.json")) or [p.name for p in out.glob("*.json")] == [records.MANIFEST]  # nothing ran here


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--launcher", "slurm"], "--launcher slurm: needs --output DIR, the folder every task of the array writes into"),
        (
            ["--launcher", "slurm", "--output", "x", "--shard", "0/2"],
            "--launcher slurm: --shard is not for it (each task runs its own shard)",
        ),
        (
            ["--launcher", "slurm", "--output", "x", "--slurm", "array=0"],
            "--slurm array=0: expected the number of tasks, a positive integer",
        ),
        (["--launcher", "slurm", "--output", "x", "--slurm", "time=1h"], "--slurm time=1h: expected the time limit in minutes"),
        (
            ["--launcher", "slurm", "--output", "x", "--slurm", "partition"],
            "--slurm 'partition': expected key=value pairs separated by commas, got 'partition'",
        ),
        (["--slurm", "array=2"], "--slurm: its parameters are for --launcher slurm"),
    ],
)
def test_bad_launcher_options_are_one_line(cli, argv, message):
    code, _, err = cli("run", "--suite", "vl-retrieval", "--device", "cpu", *argv)
    assert (code, err) == (2, f"petlbench: error: {message}\n")


def test_an_unknown_slurm_parameter_is_one_line(cli, tmp_path, fake_slurm):
    code, _, err = cli("run", *GRID, "--output", str(tmp_path), "--launcher", "slurm", "--slurm", "colour=blue")
    assert code == 2 and err.startswith("petlbench: error: --slurm: Unknown argument 'colour'") and err.count("\n") == 1


def test_without_slurm_the_error_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    code, _, err = cli("run", *GRID, "--output", str(tmp_path), "--launcher", "slurm")
    assert (code, err) == (2, 'petlbench: error: --launcher slurm: Could not detect "srun", are you indeed on a slurm cluster?\n')


def test_without_submitit_the_error_names_the_extra(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    code, _, err = cli("run", *GRID, "--output", str(tmp_path), "--launcher", "slurm")
    assert (code, err) == (2, "petlbench: error: --launcher slurm needs submitit, which is not installed: pip install 'petlbench[slurm]'\n")


def test_a_gpu_array_is_submitted_from_a_node_without_one(cli, tmp_path, fake_slurm):
    """A login node has no GPU: `--device cuda` and its options go to the tasks, which
    resolve them on their nodes."""
    argv = [*GRID[GRID.index("--variants") :], "--suite", "vl-retrieval", "--device", "cuda", "--memory-limit", "1GiB", "--devices", "0"]
    code, _, err = cli("run", *argv, "--output", str(tmp_path / "out"), "--launcher", "slurm", "--slurm", "array=1")
    assert code == 0, err
    pickled = next((tmp_path / "out.logs").rglob("*_submitted.pkl")).read_bytes()
    assert all(option.encode() in pickled for option in ("cuda", "--memory-limit", "1073741824", "--devices"))
