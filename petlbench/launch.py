"""`petlbench run --launcher slurm`: the grid as a SLURM job array through submitit, each
task running its `--shard` into the one output folder, and a job that depends on them all
writing the report and the plots. The tests run the same code under submitit's local
executor (`CLUSTER`), where this process waits for the tasks before it submits the report
job (local jobs have no dependencies), then for the report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from petlbench.config import ConfigError

# Where the jobs run: "slurm", or "local" (submitit's processes on this machine, for tests).
CLUSTER = "slurm"
EXTRA = "pip install 'petlbench[slurm]'"
# `petlbench.cli.main`: a task's command line
Command = Callable[[list[str]], int]


def parse(text: str) -> tuple[int | None, dict[str, Any]]:
    """``--slurm key=value,...``: ``array`` is the number of tasks (shards), ``time`` the
    time limit in minutes (submitit's ``timeout_min``); every other key is a parameter of
    submitit's SLURM executor (``partition``, ``gpus_per_task``, ``mem_gb``, ...)."""
    tasks, params = None, {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--slurm {text!r}: expected key=value pairs separated by commas, got {item!r}")
        key, value = key.strip(), value.strip()
        number = int(value) if value.isdigit() else None
        if key == "array":
            if not number:
                raise ConfigError(f"--slurm array={value}: expected the number of tasks, a positive integer")
            tasks = number
        elif key == "time":
            if number is None:
                raise ConfigError(f"--slurm time={value}: expected the time limit in minutes")
            params["timeout_min"] = number
        else:
            params[f"slurm_{key}"] = value if number is None else number
    return tasks, params


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher slurm needs submitit, which is not installed: {EXTRA}") from None
    return submitit


def logs_folder(output: Path) -> Path:
    """The jobs' logs and submitit's files, beside the records (a folder inside would be
    taken for a sweep of its own by the reports)."""
    return output.with_name(f"{output.name}.logs")


def submit(command: Command, argv: list[str], output: Path, tasks: int, params: dict[str, Any], sweeps: list[Path] | None) -> list[str]:
    """Submit ``tasks`` shards of ``petlbench run argv`` (argv without --launcher, --slurm,
    --shard), each run by ``command`` (the command line's `main`, passed in so that this
    module does not import the command line), as one array, then the report job; return
    the job ids. The report is that of ``output``, or of ``sweeps`` (the subfolders of
    `--budget`) in it."""
    submitit = _submitit()
    try:
        executor = submitit.AutoExecutor(folder=logs_folder(output) / "%j", cluster=CLUSTER)
    except RuntimeError as exc:  # no SLURM here (no srun on PATH)
        raise ConfigError(f"--launcher slurm: {exc}") from None
    try:
        executor.update_parameters(name="petlbench", **params)
    except (NameError, AssertionError, ValueError) as exc:
        raise ConfigError(f"--slurm: {str(exc).splitlines()[0]}") from None
    with executor.batch():  # one job array on SLURM
        shards = [executor.submit(run_shard, command, [*argv, "--shard", f"{i}/{tasks}"]) for i in range(tasks)]
    if CLUSTER == "slurm":
        array = shards[0].job_id.split("_")[0]
        executor.update_parameters(slurm_additional_parameters={"dependency": f"afterany:{array}"})
    else:  # no dependencies between local jobs: the report waits for the tasks here
        for job in shards:
            job.wait()
    report = executor.submit(write_report, output, sweeps)
    if CLUSTER != "slurm":
        report.result()  # its failure, raised here
    return [job.job_id for job in shards] + [report.job_id]


def run_shard(command: Command, argv: list[str]) -> None:
    """A task of the array: its shard of the sweep; a failed run fails the task."""
    if (code := command(["run", *argv])) != 0:
        sys.exit(code)


def write_report(output: Path, sweeps: list[Path] | None) -> None:
    """The dependent job: the report and plots of every record there, and the runs of the
    manifest that have none (a task that failed or was cut off) named in its log."""
    from petlbench.folder import runs_without_record
    from petlbench.report.files import write_report as write_files

    write_files(output, sweeps)
    missing, unreadable = runs_without_record(sweeps or [output])
    for folder, runs in missing.items():
        print(f"petlbench: {folder}: no record for {', '.join(runs)}", file=sys.stderr)
    for problem in unreadable:
        print(f"petlbench: {problem}", file=sys.stderr)
