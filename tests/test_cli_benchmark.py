"""Timing of the commands a user runs to look before committing (pytest-benchmark):
`petlbench list` in a fresh interpreter, `estimate` of one variant at a batch size and
under a budget on ViT-B/32 (config only, fake tensors). Nothing here asserts a time
(machines are noisy); what each run computes is checked. History:
`pytest tests/test_cli_benchmark.py -n 0 --benchmark-autosave`, later `--benchmark-compare`;
the timings in docs/estimate.md come from these."""

from __future__ import annotations

import subprocess
import sys

import pytest

from petlbench.config import PROJECT_ROOT
from petlbench.estimate import at_batch, make_job, within_budget

pytestmark = pytest.mark.slow


def test_list_in_a_fresh_interpreter(benchmark):
    def run() -> str:
        return subprocess.run(
            [sys.executable, "-m", "petlbench.cli", "list"], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
        ).stdout

    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert "registered methods:" in out


@pytest.fixture(scope="module")
def job():
    return make_job("clip-vit-base-patch32", "vl-retrieval", ["lora"], None)


def test_estimate_of_one_variant_at_a_batch_size(benchmark, job):
    (row,) = benchmark.pedantic(at_batch, args=(job, 64), rounds=2, iterations=1)
    benchmark.extra_info["train_peak_bytes"] = row.peak.peak_bytes
    assert row.peak.peak_bytes > row.peak.breakdown["parameters"] > 0


def test_estimate_of_one_variant_under_a_budget(benchmark, job):
    (row,) = benchmark.pedantic(within_budget, args=(job, 8 * 2**30), rounds=1, iterations=1)
    benchmark.extra_info.update(max_batch_size=row.max_batch_size, train_peak_bytes=row.peak.peak_bytes)
    assert row.max_batch_size > 0 and row.peak.peak_bytes <= 8 * 2**30
