"""The suite's training options `train.precision` (bf16 autocast) and `train.grad_checkpointing`
(non-reentrant activation checkpointing): what they change and what they must not, for every
registered method on every backbone family it supports."""

import dataclasses
import itertools

import pytest
import torch

from petlbench import records
from petlbench.config import ConfigError, load_suite
from petlbench.measure.memory import CpuAccountingMeter
from petlbench.methods import registered
from petlbench.models.loader import Architecture, clip_architecture
from petlbench.tasks.retrieval.task import contrastive_loss, random_batch
from petlbench.train import Training, checkpoint_blocks, make_optimizer, prepare, train_step
from petlbench.variants import load_variant
from tests.conftest import tiny_args
from tests.test_estimate import TINY, tiny_config

SUITE = load_suite("vl-retrieval")
# BERT's dropout is on in the VSE family: checkpointing must replay the same dropout masks.
FAMILIES = TINY
CASES = [(family, name) for family in FAMILIES for name, spec in sorted(registered().items()) if family in spec.families]


def deep_clip(layers: int) -> Architecture:
    config = tiny_config()
    config.vision_config.num_hidden_layers = config.text_config.num_hidden_layers = layers
    return clip_architecture(config)


def suite(**train):
    return dataclasses.replace(SUITE, train=dataclasses.replace(SUITE.train, **train))


def build(architecture: Architecture, method: str, suite_cfg, batch: dict) -> torch.nn.Module:
    """``method`` on a fresh backbone (seeded: the same weights every call), in training mode."""
    torch.manual_seed(0)
    model = prepare(architecture.build("sdpa"), suite_cfg.train, load_variant(method), data=lambda _size: itertools.repeat(batch))
    return model.train()


def batch_for(architecture: Architecture, batch_size: int = 4) -> dict:
    torch.manual_seed(1)
    return random_batch(architecture, batch_size, architecture.max_text_positions)


@pytest.mark.parametrize("family, method", CASES)
def test_checkpointing_changes_no_gradient_and_no_flag(family, method):
    batch = batch_for(FAMILIES[family])
    grads = {}
    for checkpointing in (False, True):
        model = build(FAMILIES[family], method, suite(grad_checkpointing=checkpointing), batch)
        torch.manual_seed(2)  # the same dropout masks in both runs
        image, text = model.encode_image(batch["pixel_values"]), model.encode_text(batch["input_ids"], batch["attention_mask"])
        contrastive_loss(image, text, model.logit_scale).backward()
        grads[checkpointing] = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # it was on
    assert grads[True].keys() == grads[False].keys()  # the same parameters train
    for name, grad in grads[False].items():  # the recomputation gives the same bits on torch 2.13's CPU kernels
        assert grad is not None, name
        torch.testing.assert_close(grads[True][name], grad, rtol=0, atol=1e-6, msg=name)


def step_peak(architecture: Architecture, method: str, suite_cfg, batch: dict) -> int:
    """Bytes of a steady-state training step under the CPU accounting, as `train.run` measures it."""
    training = Training(build(architecture, method, suite_cfg, batch), suite_cfg.train, load_variant(method).config.lr)
    return training.measure(itertools.repeat(batch), torch.device("cpu"), CpuAccountingMeter()).peak.peak_bytes


def test_checkpointing_lowers_full_finetuning_and_costs_a_frozen_tower_nothing():
    architecture = deep_clip(layers=6)
    batch = batch_for(architecture, batch_size=32)  # activations dominate the peak
    full = [step_peak(architecture, "full", suite(grad_checkpointing=on), batch) for on in (False, True)]
    assert full[1] < full[0]
    # transformers' checkpointing also hooks the token embedding to output a tensor that
    # requires grad; left in place, the linear probe's frozen text tower would keep a graph
    linear = [step_peak(architecture, "linear", suite(grad_checkpointing=on), batch) for on in (False, True)]
    assert linear[1] == linear[0]


@pytest.mark.parametrize("family, checkpointed", [("clip", ["clip"]), ("vse", ["bert"])])
def test_every_transformer_block_is_checkpointed(family, checkpointed):
    backbone = FAMILIES[family].build("sdpa")
    assert checkpoint_blocks(backbone) == checkpointed  # transformers' ResNet does not support it: the VSE image tower is not
    assert all(block.gradient_checkpointing for blocks in backbone.blocks().values() for block in blocks)


def test_checkpointing_a_model_without_transformers_blocks_is_a_config_error():
    with pytest.raises(ConfigError, match="train.grad_checkpointing"):
        checkpoint_blocks(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family, method", CASES)
def test_bf16_step_keeps_fp32_weights_and_state_and_a_close_loss(family, method):
    batch = batch_for(FAMILIES[family])
    losses = {}
    for precision in ("fp32", "bf16"):
        suite_cfg = suite(precision=precision)
        model = build(FAMILIES[family], method, suite_cfg, batch)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], suite_cfg.train, load_variant(method).config.lr)
        torch.manual_seed(2)
        losses[precision] = train_step(model, batch, opt, precision).item()
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert {t.dtype for s in opt.state.values() for key, t in s.items() if key != "step"} == {torch.float32}
    assert losses["bf16"] != losses["fp32"]  # autocast was on
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


@pytest.mark.slow
def test_run_applies_and_records_both_options(cli, tmp_path):
    """Through `petlbench run`: recorded in the suite (and so in its hash), and in effect."""
    settings = {"default": [], "bf16": ["train.precision=bf16"], "checkpointing": ["train.grad_checkpointing=true"]}
    found = {}
    for name, extra in settings.items():
        code, _, err = cli(
            "run", "--suite", "vl-retrieval", "--methods", "full", "--device", "cpu", "--output", str(tmp_path / name), *tiny_args(*extra)
        )
        assert code == 0, err
        [found[name]] = records.read_all(tmp_path / name)
    assert len({r["run"]["suite_hash"] for r in found.values()}) == 3  # never in one table
    train = {name: r["config"]["suite"]["train"] for name, r in found.items()}
    assert [(t["precision"], t["grad_checkpointing"]) for t in train.values()] == [("fp32", False), ("bf16", False), ("fp32", True)]
    memory = {name: r["cost"]["memory"] for name, r in found.items()}
    assert memory["checkpointing"]["train_peak_bytes"] < memory["default"]["train_peak_bytes"]
    assert memory["checkpointing"]["eval_peak_bytes"] == memory["default"]["eval_peak_bytes"]  # no backward, nothing to checkpoint
    assert memory["bf16"]["train_peak_bytes"] != memory["default"]["train_peak_bytes"]
    assert memory["bf16"]["eval_peak_bytes"] != memory["default"]["eval_peak_bytes"]  # evaluation runs under autocast too
