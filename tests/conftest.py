"""Shared tiny settings: the shipped model on a few dozen generated scenes."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from petlbench.cli import main
from petlbench.isolation import JOBS_ENV

# One run at a time, in the test's own process (where monkeypatching reaches), unless a test
# asks for more: the default, as many jobs as there are cores, spawns a process per run.
# Subprocesses of the tests inherit it.
os.environ[JOBS_ENV] = "1"

# The test command runs the tests in as many processes as there are cores (pytest-xdist,
# `-n auto` in pyproject.toml): each of them computes with one intra-op thread, and so do
# the processes it starts, so that the cores are not oversubscribed.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Small enough that one run takes about a second on 2 cores, large enough that every
# phase (warm-up, measured window, timed steps, evaluation) happens.
TINY = [
    "data.train_images=48",
    "data.val_images=10",
    "data.test_images=12",
    "train.batch_size=8",
    "train.steps=4",
    "train.warmup_steps=1",
    "train.measure_steps=1",
    "eval.batch_size=32",
]


def tiny_args(*extra: str) -> list[str]:
    out = []
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def default_sigint() -> None:
    """For `subprocess.run(preexec_fn=...)` of a test that sends SIGINT: in the child before
    it starts, SIGINT handled as a foreground terminal gives it. A test session started in
    the background passes SIGINT on ignored, and Python keeps an ignored SIGINT ignored, as
    a program in the background should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
