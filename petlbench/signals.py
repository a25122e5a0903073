"""How petlbench's commands stop on a signal: SIGINT and SIGTERM raise `Interrupted`
where the command decides what to leave behind, and a worker process dies with the
command that started it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

# prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the sweep: which signal, and how far it got. Not an
    `Exception`: no run records it as its own failure."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name} before any run started; nothing was run")
        self.signum = signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM (what SLURM sends at a time limit) raises `Interrupted` like Ctrl-C raises
    `KeyboardInterrupt`, so that the current run is abandoned cleanly: its lock released,
    its process stopped, no temporary file left."""

    def stop(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have this process (a worker forked by process ``parent``) receive ``signum`` when its
    parent dies, however it dies (SIGKILL included), so that no worker outlives its
    command holding its output pipe (Linux; elsewhere the parent's own clean-up is all)."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent died before the request: act as it asked
        os.kill(os.getpid(), signum)
