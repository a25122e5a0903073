"""`petlbench run --jobs N` and `--devices`: several runs at once, each in a process of its
own, with the records a serial one-thread sweep writes; the slots of the machine (threads,
GPUs, where the GPUs are stood in for on the CPU), and signals that stop every run."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from petlbench import faults, isolation, records, sweep
from petlbench.cli import main
from petlbench.config import ConfigError
from petlbench.isolation import JOBS_ENV, Attempt, Slot, attempt_in_fresh_process, slots
from petlbench.plan import make_plan
from tests.conftest import TINY, default_sigint, tiny_args
from tests.test_isolation import MARK, _spawned_children

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
GRID = ["--suite", "vl-retrieval", "--device", "cpu", "--variants", "linear,bitfit,lora", "--seeds", "0", *tiny_args()]
# What depends on the clock (and `finished`, on when the run ended).
TIMING = {
    "run": ("finished",),
    "cost": ("step_time_s_median", "data_wait_s_median", "train_samples_per_s", "eval_samples_per_s", "train_s", "eval_s", "wall_s"),
}
SHARING = ("cost", "runs_at_once")  # how many runs shared the machine, which the times depend on


def _untimed(path):
    record = json.loads(path.read_text())
    for part, keys in TIMING.items():
        for key in keys:
            del record[part][key]
    return record, record[SHARING[0]].pop(SHARING[1])


@pytest.mark.slow
def test_two_jobs_write_the_records_of_one_serial_one_thread_sweep(cli, tmp_path, monkeypatch):
    """...in two processes for three runs: on the CPU a slot's process serves run after run,
    and what one run leaves in it changes nothing in the next one's record."""
    started, start = [], isolation.Worker._start
    monkeypatch.setattr(isolation.Worker, "_start", lambda worker, name: started.append(name) or start(worker, name))
    code, parallel_out, err = cli("run", *GRID, "--output", str(tmp_path / "jobs2"), "--jobs", "2")
    assert code == 0, err
    assert started == ["petlbench-worker"] * 2
    assert "3 runs on cpu, 2 runs at a time of 1 thread" in parallel_out
    code, _, err = cli("run", *GRID, "--output", str(tmp_path / "jobs1"), "--jobs", "1")
    assert code == 0, err
    names = [f"{v}--seed0.json" for v in ("linear", "bitfit", "lora")]
    for name in names:
        (serial, alone), (parallel, sharing) = _untimed(tmp_path / "jobs1" / name), _untimed(tmp_path / "jobs2" / name)
        assert (alone, sharing) == (1, 2)
        assert parallel == serial, name  # metrics, memory figures, env (threads included) byte for byte
        assert parallel["env"]["threads"] == 1 and parallel["run"]["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "jobs2").glob(".*")) == []  # no lock, no temporary file


def test_a_parallel_sweep_returns_the_records_in_grid_order_and_each_slot_runs_one_at_a_time(tmp_path, monkeypatch):
    """The scheduling, with a stand-in for the run's process: a run that ends frees its slot
    (GPU) for the next, no slot ever runs two, and the records come back in grid order."""
    plan = make_plan("vl-retrieval", ["linear", "bitfit", "lora"], [0, 1], tmp_path, TINY)
    busy, log, guard = set(), [], threading.Lock()

    def fake(worker, plan, variant, seed, device, on_step, stop):
        slot = worker.slot
        with guard:
            assert slot.gpu not in busy, f"two runs on GPU {slot.gpu}"
            busy.add(slot.gpu)
            log.append((variant.name, seed, slot.gpu))
        time.sleep(0.3 if variant.name == "linear" else 0.05)
        with guard:
            busy.discard(slot.gpu)
        return Attempt("error", f"stand-in on {slot.gpu}", None, records.environment(device, query_device=False))

    monkeypatch.setattr(isolation.Worker, "attempt", fake)
    out = sweep.run_plan(plan, CPU, slots=[Slot(gpu="4"), Slot(gpu="7")])
    assert [(r["run"]["variant"], r["run"]["seed"]) for r in out] == [(v.name, s) for v, s in plan.grid()]
    assert {gpu for *_, gpu in log} == {"4", "7"} and len(log) == 6
    assert {r["run"]["error"] for r in out} == {"stand-in on 4", "stand-in on 7"}
    assert [p.name for p in tmp_path.glob(".*")] == []  # every lock released


@pytest.mark.slow
def test_a_run_process_sees_only_its_gpu_and_computes_with_the_slot_threads():
    """What `--devices` gives a run's process, on the CPU: ``CUDA_VISIBLE_DEVICES`` set before
    torch starts CUDA (the child records what it saw); its threads are the slot's, not this
    process's."""
    plan = make_plan("vl-retrieval", ["linear"], [0], None, TINY)
    threads = 2 if torch.get_num_threads() == 1 else 1  # not this process's
    status, _, _, env = attempt_in_fresh_process(plan, plan.variants[0], 0, CPU, None, Slot(threads=threads, gpu="3"))
    assert status == "ok" and env["cuda_visible_devices"] == "3" and env["threads"] == threads
    assert "cuda_visible_devices" not in attempt_in_fresh_process(plan, plan.variants[0], 0, CPU, None)[3]


def test_the_default_is_one_thread_per_run_and_as_many_runs_as_cores(monkeypatch):
    monkeypatch.delenv(JOBS_ENV)
    monkeypatch.setattr(isolation, "cores", lambda: 8)
    assert slots(CPU, None, None, None) == [Slot(1)] * 8
    assert slots(CPU, None, 3, None) == [Slot(3)] * 2
    assert slots(CPU, 3, 8, None) == [Slot(8)] * 3  # more threads than cores at once is allowed, if asked for
    monkeypatch.setenv(JOBS_ENV, "5")
    assert slots(CPU, None, None, None) == [Slot(1)] * 5
    assert slots(CPU, 2, None, None) == [Slot(1)] * 2  # --jobs over the environment
    monkeypatch.setattr(isolation, "cores", lambda: 1)
    monkeypatch.delenv(JOBS_ENV)
    assert slots(CPU, None, None, None) == [Slot(1)]


def test_devices_are_the_visible_gpus_each_run_seeing_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slots(CUDA, None, None, None) == [Slot(None, "0"), Slot(None, "1"), Slot(None, "2")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6,7")  # the sweep's own view is narrowed already
    assert slots(CUDA, None, 2, [2, 0]) == [Slot(2, "7"), Slot(2, "4")]


@pytest.mark.parametrize(
    ("device", "jobs", "threads", "devices", "message"),
    [
        (CPU, None, None, [0], "--devices picks GPUs; this run is on cpu (use --jobs N for runs at once on the CPU)"),
        (CPU, None, 3, None, "--threads-per-run 3: this process may run on 2 cores"),
        (CUDA, 2, None, None, "--jobs is for runs on the CPU; on cuda one run per GPU runs at a time (pick the GPUs with --devices)"),
        (CUDA, None, None, [0, 2], "--devices 0,2: no GPU 2; 2 are visible (0 to 1)"),
        (CUDA, None, None, [1, 1], "--devices 1,1: a GPU named twice (one run per GPU at a time)"),
    ],
)
def test_bad_slots_are_one_line(monkeypatch, device, jobs, threads, devices, message):
    monkeypatch.setattr(isolation, "cores", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError) as caught:
        slots(device, jobs, threads, devices)
    assert str(caught.value) == message


def test_no_jobs_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--suite", "vl-retrieval", "--jobs", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "petlbench: error: run: argument --jobs: expected a positive integer, got '0'\n"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--threads-per-run", "9999"], "1", f"--threads-per-run 9999: this process may run on {isolation.cores()} cores"),
        (["--devices", "0"], "1", "--devices picks GPUs; this run is on cpu (use --jobs N for runs at once on the CPU)"),
        ([], "two", "environment variable PETLBENCH_JOBS='two': expected a positive integer (the runs at once on the CPU)"),
    ],
)
def test_bad_options_exit_2_with_one_line(cli, monkeypatch, argv, env, message):
    monkeypatch.setenv(JOBS_ENV, env)
    code, _, err = cli("run", "--suite", "vl-retrieval", "--device", "cpu", *argv)
    assert (code, err) == (2, f"petlbench: error: {message}\n")


# A parallel sweep in a process of its own, stopped by a signal once the second run's process
# has started: every run's process must go with it, leaving no record, lock or temporary file.
@pytest.mark.slow
@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_every_run_of_a_parallel_sweep_and_leaves_nothing(tmp_path, signame, code):
    plan = make_plan("vl-retrieval", ["linear", "bitfit", "lora"], [0], tmp_path / "order", TINY)
    first, second = (plan.grid()[i - 1][0].name for i in sweep._start_order(plan, plan.grid(), 2)[:2])
    done = subprocess.run(
        [sys.executable, "-m", "petlbench.cli", "run", *GRID, "--output", str(tmp_path / "out"), "--jobs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, faults.ENV: f"run.spawned:{signame}:{second}", MARK: str(tmp_path)},
        preexec_fn=default_sigint,
    )
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert f"interrupted by {signame} during {first} seed 0, {second} seed 0: 0 of 3 runs finished" in done.stderr
    deadline = time.time() + 15
    while _spawned_children(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _spawned_children(str(tmp_path)), "a run's process outlived the sweep"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [records.MANIFEST]


@pytest.mark.slow
def test_runs_start_costliest_first_where_they_outnumber_the_slots(tmp_path, capsys):
    """Longest processing time first, by the FLOPs of a training step: full fine-tuning
    computes every weight's gradient (about three forward passes' work), LoRA back-propagates
    through the frozen towers without their weight gradients (about two), the linear probe
    not through them at all (about one); grid order where every run has a slot at once."""
    plan = make_plan("vl-retrieval", ["linear", "full", "lora"], [0], tmp_path, TINY)
    grid = plan.grid()
    assert sweep._start_order(plan, grid, 2) == [2, 3, 1]
    assert "runs start costliest first (estimated FLOPs of their training): full, lora, linear" in capsys.readouterr().out
    assert sweep._start_order(plan, grid, 3) == sweep._start_order(plan, grid, 1) == [1, 2, 3]
    plan.unsupported["full"] = "stand-in: the family does not have it"
    assert sweep._start_order(plan, grid, 2) == [3, 1, 2]  # a run with nothing to compute costs nothing


@pytest.mark.slow
@pytest.mark.skipif(isolation.cores() < 2, reason="runs on 2 threads")
def test_a_record_made_with_another_thread_count_is_run_again_not_skipped(cli, tmp_path):
    """Resuming with another --threads-per-run: metrics depend on the thread count, so a
    record made with 2 threads does not stand for a 1-thread run (a folder would otherwise
    mix thread counts, which compare refuses); the same count skips it."""
    argv = [
        "run",
        "--suite",
        "vl-retrieval",
        "--device",
        "cpu",
        "--variants",
        "linear",
        *tiny_args(),
        "--output",
        str(tmp_path),
        "--jobs",
        "1",
    ]
    assert cli(*argv, "--threads-per-run", "2")[0] == 0
    code, out, _ = cli(*argv, "--threads-per-run", "1", "--dry-run")
    assert code == 0 and "linear seed 0: would run" in out
    code, out, _ = cli(*argv, "--threads-per-run", "1")
    assert code == 0 and "already done" not in out and "linear seed 0: ok" in out
    assert "its record was made on 2 threads, this sweep's runs use 1: run again" in out
    assert records.read(tmp_path / "linear--seed0.json")["env"]["threads"] == 1
    code, out, _ = cli(*argv, "--threads-per-run", "1")
    assert code == 0 and "linear seed 0: already done" in out


def test_a_gpu_slot_is_the_gpu_nvml_reads_in_its_process(monkeypatch):
    """`--devices` from slot to NVML on stand-ins, in this process, torch reporting no UUID
    (CUDA_VISIBLE_DEVICES decides): the sweep sees two GPUs named by UUID, `--devices 1`
    gives a slot of the second, entering it (what a run's process does first) leaves only
    that one visible as cuda:0, and NVML reads that physical GPU, not NVML's GPU 0 or 1."""
    from petlbench.measure import nvml
    from tests.test_nvml import GPUS, _fake_pynvml

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(nvml, "_torch_uuid", lambda index: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{GPUS[2][:12]},{GPUS[0][:12]}")  # the sweep's view
    (slot,) = slots(CUDA, None, None, [1])
    assert slot.gpu == GPUS[0][:12]
    isolation.enter(slot)  # what the run's process does first (monkeypatch restores the variable)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == GPUS[0][:12]
    assert nvml.nvml_handle(_fake_pynvml(), 0) == GPUS[0]
