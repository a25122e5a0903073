"""How one run is attempted: its failure turned into a status, optionally in a fresh
process of its own (on CUDA: spawned, so that one method's allocator state cannot change
the next one's figures), and how SIGINT and SIGTERM stop a sweep cleanly."""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import torch

from petlbench import faults, records
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


def _child(conn: Connection, plan: Plan, variant: Variant, seed: int, device: torch.device) -> None:
    """The body of a run's own process: each step's loss, then the `Attempt`, go to the parent.
    Ctrl-C reaches the whole process group: the parent decides, and stops this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # already ignored from the start (`attempt_in_fresh_process`)
    conn.send(("result", attempt(plan, variant, seed, device, lambda loss: conn.send(("step", loss)))))
    conn.close()


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


def attempt_in_fresh_process(
    plan: Plan, variant: Variant, seed: int, device: torch.device, on_step: Callable[[float], None] | None
) -> Attempt:
    """`attempt` in a new interpreter (spawned, not forked): on CUDA, allocator state, cuBLAS
    handles and references leaked by one method would otherwise change the next one's
    figures. Its steps reach ``on_step`` as they happen; a process that dies is an ``error``
    naming its exit code or signal. Interrupted here, the process is stopped with this one."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, plan, variant, seed, device), name=f"petlbench-{variant.name}-seed{seed}")
    # The child starts with SIGINT ignored (an ignored signal stays ignored across exec):
    # Ctrl-C reaches the whole process group, and the child's own import time is no place
    # for a KeyboardInterrupt traceback. The parent decides, and stops the child.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    send.close()  # the child holds the only writer: its exit ends `recv` with EOFError
    result = None
    try:
        faults.inject("run.spawned", variant.name)
        while result is None:
            try:
                kind, payload = receive.recv()
            except (EOFError, OSError):  # the child is gone, possibly in the middle of a message
                break
            if kind == "step" and on_step is not None:
                on_step(payload)
            elif kind == "result":
                result = payload
        process.join(CHILD_EXIT_S)  # a child that hangs in its teardown is stopped below
    finally:
        receive.close()
        if process.is_alive():
            process.terminate()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    return result if result is not None else Attempt("error", died(process.exitcode), None, records.environment(device, query_device=False))
