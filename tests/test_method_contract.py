"""The contract every registered method keeps, run over the registry (not a hand-kept list)."""

import dataclasses
import itertools

import pytest
import torch
import yaml

from petlbench.config import build
from petlbench.methods import registered
from petlbench.models.loader import load_backbone
from petlbench.objective import contrastive_loss
from petlbench.variants import load_variant
from tests.frozen import assert_unchanged_except, snapshot

METHODS = sorted(registered())
CAPTIONS = [
    "a big red circle in the middle",
    "a tiny blue ring at the top left and a small white cross in the bottom",
    "we see a large green square at the right is below a big cyan diamond at the top right",
    "a picture of a little orange triangle in the center",
]


@pytest.fixture
def setup(request):
    torch.manual_seed(0)
    backbone, tok, _ = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    enc = tok(CAPTIONS, padding="max_length", max_length=40, return_tensors="pt")
    batch = {"pixel_values": torch.randn(4, 3, 48, 48), "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    before = snapshot(backbone)
    spec = registered()[request.param]
    cfg = load_variant(request.param).config
    if spec.needs_data:
        model = spec.apply(backbone, cfg, data=lambda _batch_size: itertools.repeat(batch))
    else:
        model = spec.apply(backbone, cfg)
    return backbone, model, batch, before, cfg


def _loss(model, batch):
    return contrastive_loss(
        model.encode_image(batch["pixel_values"]), model.encode_text(batch["input_ids"], batch["attention_mask"]), model.logit_scale
    )


@pytest.mark.parametrize("setup", METHODS, indirect=True)
def test_gradients_reach_exactly_the_trainable_parameters(setup):
    _, model, batch, _, _ = setup
    _loss(model, batch).backward()
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable, "the method trains nothing"
    missing = sorted(n for n in trainable if named[n].grad is None)
    assert not missing, f"trainable without gradient: {missing[:5]}"
    leaked = sorted(n for n, p in named.items() if not p.requires_grad and p.grad is not None)
    assert not leaked


@pytest.mark.parametrize("setup", METHODS, indirect=True)
def test_training_changes_trainable_and_nothing_frozen(setup):
    backbone, model, batch, before, cfg = setup
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr)
    for _ in range(3):
        _loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert any(not torch.equal(a, p) for a, p in zip(start, trainable, strict=True))
    # every backbone tensor that does not train, buffers included, is bit-identical
    assert_unchanged_except(backbone, before, {id(p) for p in trainable})


@pytest.mark.parametrize("method", METHODS)
def test_config_round_trips_through_yaml(method):
    cfg = load_variant(method).config
    text = yaml.safe_dump(dataclasses.asdict(cfg))
    assert build(type(cfg), yaml.safe_load(text), "round-trip") == cfg
