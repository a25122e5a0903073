"""The contract every registered method keeps, for every backbone family it registers a
builder for (derived from the registry, not a hand-kept list): through `train.prepare`
and the one measured phase. (Placement on the backbone's device is its own contract:
tests/test_placement.py.)"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import yaml
from torch import nn

from petlbench.config import build, load_suite
from petlbench.measure.memory import CpuAccountingMeter, training_state
from petlbench.measure.phase import training_phase
from petlbench.methods import registered
from petlbench.models.loader import load_backbone
from petlbench.models.vse import tiny_vse
from petlbench.tasks import get_task
from petlbench.tasks.glue.task import TASK as TEXT_TO_TEXT
from petlbench.train import make_optimizer, prepare, train_step
from petlbench.variants import load_variant
from tests.frozen import assert_unchanged_except, snapshot

SUITE = load_suite("vl-retrieval")
SUITES = {"clip": SUITE, "vse": SUITE, "t5": load_suite("glue-embedded")}  # each family's task and training rules
# The variant a method runs as where its default one does not apply to the family.
FAMILY_VARIANTS = {("t5", "prompt"): "prompt-100"}
PAIRS = [(family, name) for name, spec in sorted(registered().items()) for family in spec.families]
CAPTIONS = [
    "a big red circle in the middle",
    "a tiny blue ring at the top left and a small white cross in the bottom",
    "we see a large green square at the right is below a big cyan diamond at the top right",
    "a picture of a little orange triangle in the center",
]


def _backbone_and_batch(family: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The shipped CLIP or T5 (real weights) or a seeded tiny ResNet + BERT, and a batch of 4."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if family == "t5":
        backbone, tok, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
        suite = SUITES["t5"]
        small = dataclasses.replace(suite, data=dataclasses.replace(suite.data, train_examples=2, val_examples=1, test_examples=1))
        return backbone, next(TEXT_TO_TEXT.splits(small, tok, None, False)["train"].training_batches(4, generator))
    if family == "clip":
        backbone, tok, *_ = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
        enc = tok(CAPTIONS, padding="max_length", max_length=40, return_tensors="pt")
        return backbone, {
            "pixel_values": torch.randn(4, 3, 48, 48, generator=generator),
            **{k: enc[k] for k in ("input_ids", "attention_mask")},
        }
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 7:] = mask[3, 3:] = 0
    ids = torch.randint(0, 100, (4, 12), generator=generator)
    return tiny_vse(), {"pixel_values": torch.randn(4, 3, 64, 64, generator=generator), "input_ids": ids, "attention_mask": mask}


@pytest.fixture
def setup(request):
    family, method = request.param
    backbone, batch = _backbone_and_batch(family)
    before = snapshot(backbone)
    variant = load_variant(FAMILY_VARIANTS.get((family, method), method))
    suite = SUITES[family]
    model = prepare(backbone, suite.train, variant, data=lambda _batch_size: itertools.repeat(batch), task=suite.task).train()
    return backbone, model, batch, before, variant


def _loss(backbone, model, batch):
    """The training loss of the task of ``backbone``'s family (`SUITES`)."""
    return get_task(SUITES[backbone.family].task).implementation.loss(model, batch)


IDS = [f"{family}-{method}" for family, method in PAIRS]


@pytest.mark.parametrize("setup", PAIRS, indirect=True, ids=IDS)
def test_gradients_reach_exactly_the_trainable_parameters(setup):
    backbone, model, batch, _, _ = setup
    _loss(backbone, model, batch).backward()
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable, "the method trains nothing"
    missing = sorted(n for n in trainable if named[n].grad is None)
    assert not missing, f"trainable without gradient: {missing[:5]}"
    leaked = sorted(n for n, p in named.items() if not p.requires_grad and p.grad is not None)
    assert not leaked


@pytest.mark.parametrize("setup", PAIRS, indirect=True, ids=IDS)
@pytest.mark.slow
def test_training_changes_trainable_and_nothing_frozen(setup):
    backbone, model, batch, before, variant = setup
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=variant.config.lr)
    for _ in range(3):
        _loss(backbone, model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert any(not torch.equal(a, p) for a, p in zip(start, trainable, strict=True))
    # every backbone tensor that does not train, buffers included, is bit-identical; a CNN
    # that trains (full fine-tuning of the VSE family) updates its BatchNorm statistics, as it should
    cnn = getattr(backbone, "resnet", None)
    cnn_trains = cnn is not None and any(p.requires_grad for p in cnn.parameters())
    statistics = {id(t) for m in cnn.modules() if isinstance(m, nn.BatchNorm2d) for t in m.buffers()} if cnn_trains else set()
    assert_unchanged_except(backbone, before, {id(p) for p in trainable} | statistics)
    if cnn is not None and not cnn_trains:  # a frozen CNN is a fixed feature extractor: eval mode
        assert not any(m.training for m in cnn.modules())


def kept_blocks(backbone, model, batch) -> dict[str, set[int]]:
    """The blocks of each tower in whose forward autograd saved a tensor for backward."""
    inside: list[tuple[str, int]] = []
    kept = {tower: set() for tower in backbone.blocks()}
    hooks = []

    def leave(module, args, out) -> None:  # returns None: the block's output stays as it is
        inside.pop()

    for tower, blocks in backbone.blocks().items():
        for i, block in enumerate(blocks):
            hooks.append(block.register_forward_pre_hook(lambda module, args, key=(tower, i): inside.append(key)))
            hooks.append(block.register_forward_hook(leave))

    def pack(tensor):
        if inside:
            kept[inside[-1][0]].add(inside[-1][1])
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            _loss(backbone, model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    return kept


@pytest.mark.parametrize("setup", PAIRS, indirect=True, ids=IDS)
def test_what_the_method_keeps_of_the_backbone_is_what_it_declares(setup):
    """The memory argument of each method, per family (`register(..., keeps=...)`):
    side methods keep no backbone block, partial fine-tuning its last k, and methods whose
    gradient crosses the backbone every block."""
    backbone, model, batch, _, variant = setup
    declared = registered()[variant.method].keeps[backbone.family]
    expected = {tower: set(declared.blocks(variant.config, len(blocks), tower)) for tower, blocks in backbone.blocks().items()}
    assert kept_blocks(backbone, model, batch) == expected, declared.says


@pytest.mark.parametrize("setup", PAIRS, indirect=True, ids=IDS)
@pytest.mark.slow
def test_the_measured_phase_runs_and_counts_the_step(setup):
    backbone, model, batch, _, variant = setup
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], SUITE.train, variant.config.lr)
    phase = training_phase(
        lambda b: train_step(model, b, opt, task=SUITES[backbone.family].task),
        itertools.repeat(batch),
        torch.device("cpu"),
        CpuAccountingMeter(),
        lambda: training_state(model, opt),
    )
    breakdown = phase.peak.breakdown
    assert breakdown["optimizer_state"] > 0 and breakdown["transient_peak"] > sum(t.numel() * t.element_size() for t in batch.values())
    assert phase.peak.peak_bytes == sum(breakdown.values())


@pytest.mark.parametrize("method", sorted(registered()))
def test_config_round_trips_through_yaml(method):
    cfg = load_variant(method).config
    text = yaml.safe_dump(dataclasses.asdict(cfg))
    assert build(type(cfg), yaml.safe_load(text), "round-trip") == cfg
