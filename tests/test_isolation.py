"""Runs in a process of their own (forced on the CPU, where a worker serves run after run;
on CUDA each run gets a fresh one): progress from the child, a child that dies becomes an
`error` record naming its signal or exit code while the sweep goes on with a new one, and a
worker that died between runs is replaced before the next."""

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import types

import psutil
import pytest
import torch

from petlbench import faults, isolation, records
from petlbench.isolation import attempt_in_fresh_process, died
from petlbench.plan import make_plan
from petlbench.sweep import run_plan
from tests.conftest import TINY

CPU = torch.device("cpu")


@pytest.mark.slow
def test_a_spawned_run_reports_every_step_and_its_loss():
    plan = make_plan("vl-retrieval", ["linear"], [0], None, TINY)
    losses = []
    status, error, outcome, env = attempt_in_fresh_process(plan, plan.variants[0], 0, CPU, losses.append)
    assert (status, error) == ("ok", None) and outcome.metrics["values"]["rsum"] >= 0 and env["device"] == "cpu"
    assert len(losses) == plan.suite.train.steps and all(math.isfinite(loss) for loss in losses)


@pytest.mark.slow
def test_a_child_that_dies_is_an_error_record_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "run.warmup:SIGKILL:linear")  # spawned children inherit it
    plan = make_plan("vl-retrieval", ["linear", "bitfit"], [0], tmp_path, TINY)
    out = run_plan(plan, CPU, isolate=True)
    assert [(r["run"]["variant"], r["run"]["status"]) for r in out] == [("linear", "error"), ("bitfit", "ok")]
    assert out[0]["run"]["error"].startswith("the run's process was killed by signal 9 (SIGKILL)")
    assert records.read(records.record_path(tmp_path, "linear", 0))["run"]["status"] == "error"


def test_exit_codes_are_named():
    assert died(-15) == "the run's process was killed by signal 15 (SIGTERM)"
    assert died(-9).startswith("the run's process was killed by signal 9 (SIGKILL) (the kernel's out-of-memory killer")
    assert died(-(signal.SIGRTMIN + 6)).startswith(f"the run's process was killed by signal {signal.SIGRTMIN + 6} (")  # no name
    assert died(3) == "the run's process exited with code 3 before sending its result"


# The sweep with isolated runs (the CUDA path) in a process of its own, stopped by SIGTERM
# once it has started a run's process: the run's process must go with it.
SIGTERMED_SWEEP = """
import sys, torch
from petlbench.signals import Interrupted, interruptible
from petlbench.plan import make_plan
from petlbench.sweep import run_plan
plan = make_plan("vl-retrieval", ["linear"], [0], sys.argv[1], sys.argv[2:])
with interruptible():
    try:
        run_plan(plan, torch.device("cpu"), isolate=True)
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(128 + exc.signum)
"""


# Marks the processes a test's sweep starts (they inherit its environment), so that a test
# finds its own among those of the tests running beside it (pytest-xdist).
MARK = "PETLBENCH_TEST_MARK"


def _spawned_children(mark: str) -> list:
    """The spawned processes (a run's, a worker's) still alive whose environment has ``mark``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any("multiprocessing.spawn" in part or "spawn_main" in part for part in p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                if p.environ().get(MARK) == mark:
                    found.append(p)
    return found


@pytest.mark.slow
def test_a_sweep_stopped_while_a_run_process_works_stops_it_and_leaves_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SIGTERMED_SWEEP, str(tmp_path / "out"), *TINY],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, faults.ENV: "run.spawned:SIGTERM:linear", MARK: str(tmp_path)},
    )
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr and "interrupted by SIGTERM during linear seed 0: 0 of 1 runs finished" in done.stderr
    deadline = time.time() + 15
    while _spawned_children(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _spawned_children(str(tmp_path)), "the run's process outlived the sweep"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [records.MANIFEST]  # no lock, no record, no temporary file


def test_an_out_of_memory_run_is_recorded_oom_with_the_cap(monkeypatch):
    """What a CUDA run under `--memory-limit` does when it needs more: the cap is set in the
    run's own process before the run, and the allocator's error is an `oom` result."""
    calls = []
    monkeypatch.setattr(isolation, "limit_cuda_memory", lambda device, nbytes: calls.append(("limit", nbytes)))

    def run_out_of_memory(*args):
        calls.append(("run",))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    monkeypatch.setattr(isolation, "run", run_out_of_memory)
    plan = make_plan("vl-retrieval", ["full"], [0], None, TINY)
    plan.memory_limit = 160 * 2**20
    status, error, outcome, _ = isolation.attempt(plan, plan.variants[0], 0, CPU, None)
    assert calls == [("limit", 160 * 2**20), ("run",)]
    assert status == "oom" and outcome is None
    assert error == f"CUDA out of memory. Tried to allocate 2.00 MiB (batch size 8, allocator capped at {160 * 2**20} bytes)"


def test_the_cap_is_a_fraction_of_an_indexed_device(monkeypatch):
    set_to = []

    def set_fraction(fraction, device):
        if device.index is None:  # what torch does with a bare "cuda"
            raise ValueError("Expected a torch.device with a specified index or an integer, but got:cuda")
        set_to.append((fraction, device.index))

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=4 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    isolation.limit_cuda_memory(torch.device("cuda"), 2**30)  # what `--device cuda` resolves to
    isolation.limit_cuda_memory(torch.device("cuda", 0), 8 * 2**30)  # more than the card: the whole card
    assert set_to == [(0.25, 1), (1.0, 0)]


def test_a_memory_limit_needs_cuda(cli):
    code, _, err = cli("run", "--suite", "vl-retrieval", "--device", "cpu", "--memory-limit", "1GiB")
    assert code == 2 and "--memory-limit caps the CUDA caching allocator; this run is on cpu" in err


@pytest.mark.slow
def test_a_worker_that_died_between_runs_is_replaced_before_the_next():
    """A CPU worker serves run after run; killed while idle (the out-of-memory killer), the
    next run gets a new process instead of a broken pipe ending the sweep."""
    plan = make_plan("vl-retrieval", ["linear"], [0], None, TINY)
    with isolation.Worker(reuse=True) as worker:
        assert worker.attempt(plan, plan.variants[0], 0, CPU, None).status == "ok"
        first = worker._process
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
        assert worker.attempt(plan, plan.variants[0], 0, CPU, None).status == "ok"
        assert worker._process is not None and worker._process.pid != first.pid
