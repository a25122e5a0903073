"""Training-step timing of every registered method (pytest-benchmark), with the step's
CPU-accounted memory peak in `extra_info`.

Timing history: `pytest tests/test_step_benchmark.py -n 0 --benchmark-autosave`, later
`--benchmark-compare`. Nothing here asserts a time: machines are noisy; the memory figure
is guarded by `petlbench compare` in CI instead.
"""

import itertools

import pytest
import torch

from petlbench.config import load_suite
from petlbench.measure.memory import CpuAccountingMeter
from petlbench.methods import registered
from petlbench.models.loader import load_backbone
from petlbench.train import Training
from petlbench.variants import load_variant

pytestmark = pytest.mark.slow

BATCH = 16


@pytest.mark.parametrize("method", sorted(registered()))
def test_training_step(benchmark, method):
    torch.manual_seed(0)
    suite = load_suite("vl-retrieval")
    backbone, tok, *_ = load_backbone(suite.model.name, suite.model.attn_implementation, torch.device("cpu"))
    enc = tok(["a big red circle in the middle and a tiny blue ring at the top left"] * BATCH, padding="max_length",
              max_length=suite.data.text_length, return_tensors="pt")  # fmt: skip
    batch = {"pixel_values": torch.randn(BATCH, 3, 48, 48), "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    variant = load_variant(method)
    training = Training.of(backbone, suite.train, variant, data=lambda _size: itertools.repeat(batch))
    peak = training.measure(itertools.repeat(batch), torch.device("cpu"), CpuAccountingMeter()).peak
    benchmark.extra_info.update({"batch_size": BATCH, "train_peak_bytes": peak.peak_bytes, **peak.breakdown})
    loss = benchmark.pedantic(training.step, args=(batch,), rounds=3, iterations=1, warmup_rounds=1)
    assert torch.isfinite(loss)
