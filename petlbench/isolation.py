"""How one run is attempted: its failure turned into a status, optionally in a fresh
process of its own (on CUDA: spawned, so that one method's allocator state cannot change
the next one's figures), in which slot of the machine (`Slot`: its threads, its GPU), and
how SIGINT and SIGTERM stop a sweep cleanly."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import torch

from petlbench import faults, records
from petlbench.config import ConfigError
from petlbench.plan import Plan
from petlbench.registry import UnsupportedError
from petlbench.train import DivergedError, RunOutcome, run
from petlbench.variants import Variant


class Attempt(NamedTuple):
    """How one run ended: its status (`schema.STATUSES`), the reason where it is not ``ok``,
    what it measured where it is, and the environment of the process it ran in."""

    status: str
    error: str | None
    outcome: RunOutcome | None
    env: dict[str, Any] | None = None


@dataclass(frozen=True)
class Slot:
    """Where one run at a time executes (`run --jobs`, `--devices`): its intra-op threads
    (None: torch's default) and, on CUDA, the one GPU its process sees (the value of
    ``CUDA_VISIBLE_DEVICES`` in its environment; None: every GPU the sweep sees)."""

    threads: int | None = None
    gpu: str | None = None

    def __str__(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else f"{self.threads} thread{'s' * (self.threads != 1)}"


# The number of runs at once on the CPU where `run --jobs` is not given, as MAKEFLAGS is for make.
JOBS_ENV = "PETLBENCH_JOBS"


def cores() -> int:
    """The cores this process may run on (its affinity, as `taskset` or a cgroup's cpuset set it)."""
    return len(os.sched_getaffinity(0))


def slots(device: torch.device, jobs: int | None, threads: int | None, devices: list[int] | None) -> list[Slot]:
    """The slots of a sweep. On the CPU: ``jobs`` runs at once (default: `JOBS_ENV`, else as
    many as the cores allow), each with ``threads`` intra-op threads (default 1: a CPU run's
    metrics depend on its thread count, so one thread gives the same figures on every
    machine). On CUDA: one run per GPU of ``devices`` (indices among the visible GPUs;
    default: all of them)."""
    if threads is not None and threads > cores():
        raise ConfigError(f"--threads-per-run {threads}: this process may run on {cores()} cores")
    if device.type != "cuda":
        if devices is not None:
            raise ConfigError(f"--devices picks GPUs; this run is on {device.type} (use --jobs N for runs at once on the CPU)")
        threads = threads or 1
        if jobs is None:
            jobs = _jobs_from_env() or max(1, cores() // threads)
        return [Slot(threads)] * jobs
    if jobs is not None:
        raise ConfigError("--jobs is for runs on the CPU; on cuda one run per GPU runs at a time (pick the GPUs with --devices)")
    count = torch.cuda.device_count()
    if devices is None:
        devices = list(range(count))
    if bad := [k for k in devices if not 0 <= k < count]:
        raise ConfigError(f"--devices {','.join(map(str, devices))}: no GPU {bad[0]}; {count} are visible (0 to {count - 1})")
    if len(set(devices)) < len(devices):
        raise ConfigError(f"--devices {','.join(map(str, devices))}: a GPU named twice (one run per GPU at a time)")
    # The children's indices are the sweep's visible GPUs, which CUDA_VISIBLE_DEVICES may already narrow.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [name.strip() for name in visible.split(",")] if visible else [str(k) for k in range(count)]
    return [Slot(threads, names[k]) for k in devices]


def _jobs_from_env() -> int | None:
    text = os.environ.get(JOBS_ENV, "").strip()
    if not text:
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(f"environment variable {JOBS_ENV}={text!r}: expected a positive integer (the runs at once on the CPU)")


def limit_cuda_memory(device: torch.device, nbytes: int) -> None:
    """Cap this process's CUDA caching allocator at ``nbytes`` (as on a card that small): the
    cap is per process, so each run's own process sets it. (torch wants an indexed device:
    ``cuda`` alone is the current one.)"""
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total), device)


def attempt(plan: Plan, variant: Variant, seed: int, device: torch.device, on_step: Callable[[float], None] | None) -> Attempt:
    """`_attempt`, with the environment of this process (on CUDA: the GPU it ran on)."""
    result = _attempt(plan, variant, seed, device, on_step)
    return result._replace(env=records.environment(device))


def _attempt(plan: Plan, variant: Variant, seed: int, device: torch.device, on_step: Callable[[float], None] | None) -> Attempt:
    """`train.run`, with its failure turned into a status: a failing run is a result and
    the sweep goes on. Interrupts (Ctrl-C, SIGTERM) are not failures and pass through."""
    suite = plan.suite
    try:
        if plan.memory_limit is not None:
            limit_cuda_memory(device, plan.memory_limit)
        return Attempt("ok", None, run(suite, variant, seed, device, on_step, plan.settings(variant)))
    except DivergedError as exc:
        return Attempt("diverged", str(exc), None)
    except UnsupportedError as exc:  # the method does not apply to this backbone
        return Attempt("unsupported", str(exc), None)
    except torch.OutOfMemoryError as exc:
        limit = f", allocator capped at {plan.memory_limit} bytes" if plan.memory_limit is not None else ""
        return Attempt("oom", f"{exc} (batch size {plan.settings(variant).train.batch_size}{limit})", None)
    except Exception as exc:
        traceback.print_exc()
        return Attempt("error", "".join(traceback.format_exception_only(exc)).strip(), None)


def enter(slot: Slot) -> None:
    """Make this process the slot's: its GPU the only one CUDA shows it (before CUDA starts:
    torch reads ``CUDA_VISIBLE_DEVICES`` once), its intra-op threads set before any work."""
    if slot.gpu is not None:
        if torch.cuda.is_initialized():
            raise RuntimeError("CUDA started before the run's GPU was chosen")
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu
    if slot.threads is not None:
        torch.set_num_threads(slot.threads)


def _serve(jobs: Connection, results: Connection, slot: Slot) -> None:
    """The body of a run's process: entered into ``slot``, it attempts each run it receives
    (plan, variant, seed, device), sending each step's loss and then the `Attempt`, until its
    sweep closes the jobs' pipe (or goes). Ctrl-C reaches the whole process group: the
    sweep decides, and stops this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # and blocked from the start (`Worker._start`)
    enter(slot)
    while True:
        try:
            plan, variant, seed, device = jobs.recv()
        except EOFError:
            return
        result = attempt(plan, variant, seed, device, lambda loss: results.send(("step", loss)))
        if slot.gpu is not None:  # which physical GPU ran it, as this process saw it
            result.env["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        results.send(("result", result))


class Cancelled(BaseException):
    """The sweep stopped (`attempt_in_fresh_process`'s ``stop``) while this run's process
    worked: the process is stopped and there is no result. Not an `Exception`: no run
    records it as its own failure."""


# How long a run's process may take to exit after its result (CUDA teardown included).
CHILD_EXIT_S = 60


def died(exitcode: int | None) -> str:
    """How a run's process ended without a result, from its exit code."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:  # a real-time signal has no name
            name = signal.strsignal(-exitcode) or "no name"
        oom = " (the kernel's out-of-memory killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"the run's process was killed by signal {-exitcode} ({name}){oom}"
    return f"the run's process exited with code {exitcode} before sending its result"


# How often a run driven from a worker thread looks at the sweep's ``stop``, and how long it
# waits for it when its process died of SIGTERM (seconds).
STOP_POLL_S = 0.1
STOP_GRACE_S = 2


def _readable(receive: Connection, stop: threading.Event) -> bool:
    """Wait until the pipe has a message or has ended (`recv` then raises); False once
    ``stop`` is set, checked before every message."""
    while not stop.is_set():
        if receive.poll(STOP_POLL_S):
            return True
    return False


class Worker:
    """A process of its own (spawned, not forked) entered into ``slot``, attempting the runs
    it is given one at a time; a sweep has one per slot. With ``reuse`` (the CPU) it serves
    run after run, so that the interpreter's start, the imports and the suite's data are paid
    once per worker, not per run: what a run leaves behind in the process changes none of the
    next run's figures, as in a serial sweep's own process. Without it (CUDA) every run gets a
    new process: allocator state, cuBLAS handles and references leaked by one method would
    otherwise change the next one's figures. A process that dies is an ``error`` naming its
    exit code or signal, and the next run gets a new one."""

    def __init__(self, slot: Slot = Slot(), reuse: bool = False) -> None:
        self.slot, self.reuse = slot, reuse
        self._process: multiprocessing.process.BaseProcess | None = None
        self._jobs: Connection | None = None  # this end writes the runs
        self._results: Connection | None = None  # this end reads their steps and results
        self._exitcode: int | None = None  # how its last process ended

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        jobs_out, self._jobs = context.Pipe(duplex=False)
        self._results, results_in = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, args=(jobs_out, results_in, self.slot), name=name)
        # The child starts with SIGINT blocked (the signal mask is inherited across fork and
        # exec), then ignores it: Ctrl-C reaches the whole process group, and the child's own
        # import time is no place for a KeyboardInterrupt traceback. The sweep decides, and
        # stops the child. (A mask, not SIG_IGN: only the main thread may set a handler, and a
        # parallel sweep starts runs from other threads; a SIGINT that comes meanwhile waits.)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        jobs_out.close()  # the child holds the only reader of the runs and the only writer of
        results_in.close()  # their results: its exit ends `recv` with EOFError

    def attempt(
        self,
        plan: Plan,
        variant: Variant,
        seed: int,
        device: torch.device,
        on_step: Callable[[float], None] | None,
        stop: threading.Event | None = None,
    ) -> Attempt:
        """`attempt` in this worker's process, its steps reaching ``on_step`` as they happen.
        Interrupted here, the process is stopped with this one; driven from a thread other
        than the main one (which alone gets signals), ``stop`` set stops it and raises
        `Cancelled`."""
        if self._process is not None and not self._process.is_alive():  # it died between runs (the out-of-memory killer)
            self.close(wait=False)
        result, ended = None, False
        try:
            if self._process is None:
                self._start("petlbench-worker" if self.reuse else f"petlbench-{variant.name}-seed{seed}")
            self._jobs.send((plan, variant, seed, device))
            if not self.reuse:
                self._jobs.close()  # its only run: the process exits once it is done
            faults.inject("run.spawned", variant.name)
            while result is None:
                if stop is not None and not _readable(self._results, stop):
                    raise Cancelled
                kind, payload = self._results.recv()
                if kind == "step" and on_step is not None:
                    on_step(payload)
                elif kind == "result":
                    result = payload
        except (EOFError, OSError):  # the child is gone (before it took the run, or in the middle of a message)
            ended = True
        finally:
            if result is None or not self.reuse:  # done with its one run, gone, or stopped in the middle of the run
                self.close(wait=result is not None or ended)
        if result is None and stop is not None and self._exitcode == -signal.SIGTERM and stop.wait(STOP_GRACE_S):
            raise Cancelled  # the SIGTERM that stops the sweep (SLURM sends it to every process of a job) reached the child first
        return (
            result if result is not None else Attempt("error", died(self._exitcode), None, records.environment(device, query_device=False))
        )

    def close(self, wait: bool = True) -> None:
        """End the process: asked to (its jobs' pipe closed) and, with ``wait``, given
        `CHILD_EXIT_S` to exit (its teardown, CUDA's included); then stopped (SIGTERM, then
        SIGKILL), even where the wait is interrupted."""
        if (process := self._process) is None:
            return
        self._jobs.close()
        self._results.close()
        try:
            if wait and process.pid is not None:
                process.join(CHILD_EXIT_S)
        finally:
            if process.is_alive():
                process.terminate()
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()
            self._process, self._exitcode = None, process.exitcode


def attempt_in_fresh_process(
    plan: Plan,
    variant: Variant,
    seed: int,
    device: torch.device,
    on_step: Callable[[float], None] | None,
    slot: Slot = Slot(),
    stop: threading.Event | None = None,
) -> Attempt:
    """`attempt` in a new interpreter of its own, entered into ``slot`` (`Worker`)."""
    with Worker(slot) as worker:
        return worker.attempt(plan, variant, seed, device, on_step, stop)
