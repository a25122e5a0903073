"""Runs in a fresh process (the CUDA path, forced on the CPU): progress from the child, and a
child that dies becomes an `error` record naming its signal or exit code while the sweep
goes on."""

import math
import types

import torch

from petlbench import faults, records, sweep
from petlbench.sweep import attempt_in_fresh_process, died, make_plan, run_plan
from tests.conftest import TINY

CPU = torch.device("cpu")


def test_a_spawned_run_reports_every_step_and_its_loss():
    plan = make_plan("vl-retrieval", ["linear"], [0], None, TINY)
    losses = []
    status, error, outcome, env = attempt_in_fresh_process(plan, plan.variants[0], 0, CPU, losses.append)
    assert (status, error) == ("ok", None) and outcome.metrics["rsum"] >= 0 and env["device"] == "cpu"
    assert len(losses) == plan.suite.train.steps and all(math.isfinite(loss) for loss in losses)


def test_a_child_that_dies_is_an_error_record_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "run.warmup:SIGKILL:linear")  # spawned children inherit it
    plan = make_plan("vl-retrieval", ["linear", "bitfit"], [0], tmp_path, TINY)
    out = run_plan(plan, CPU, isolate=True)
    assert [(r["run"]["variant"], r["run"]["status"]) for r in out] == [("linear", "error"), ("bitfit", "ok")]
    assert out[0]["run"]["error"].startswith("the run's process was killed by signal 9 (SIGKILL)")
    assert records.read(records.record_path(tmp_path, "linear", 0))["run"]["status"] == "error"


def test_exit_codes_are_named():
    assert died(-15) == "the run's process was killed by signal 15 (SIGTERM)"
    assert died(3) == "the run's process exited with code 3 before sending its result"


def test_an_out_of_memory_run_is_recorded_oom_with_the_cap(monkeypatch):
    """What a CUDA run under `--memory-limit` does when it needs more: the cap is set in the
    run's own process before the run, and the allocator's error is an `oom` result."""
    calls = []
    monkeypatch.setattr(sweep, "limit_cuda_memory", lambda device, nbytes: calls.append(("limit", nbytes)))

    def run_out_of_memory(*args):
        calls.append(("run",))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    monkeypatch.setattr(sweep, "run", run_out_of_memory)
    plan = make_plan("vl-retrieval", ["full"], [0], None, TINY)
    plan.memory_limit = 160 * 2**20
    status, error, outcome, _ = sweep.attempt(plan, plan.variants[0], 0, CPU, None)
    assert calls == [("limit", 160 * 2**20), ("run",)]
    assert status == "oom" and outcome is None
    assert error == f"CUDA out of memory. Tried to allocate 2.00 MiB (batch size 8, allocator capped at {160 * 2**20} bytes)"


def test_the_cap_is_a_fraction_of_the_device(monkeypatch):
    set_to = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=4 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, device: set_to.append(fraction))
    sweep.limit_cuda_memory(torch.device("cuda", 0), 2**30)
    sweep.limit_cuda_memory(torch.device("cuda", 0), 8 * 2**30)  # more than the card: the whole card
    assert set_to == [0.25, 1.0]


def test_a_memory_limit_needs_cuda(cli):
    code, _, err = cli("run", "--suite", "vl-retrieval", "--device", "cpu", "--memory-limit", "1GiB")
    assert code == 2 and "--memory-limit caps the CUDA caching allocator; this run is on cpu" in err
