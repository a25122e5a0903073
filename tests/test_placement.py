"""The placement contract, over the registry: with the backbone on ``meta``, `prepare` gives a
model wholly on ``meta`` and one training step runs there. On a GPU run the backbone is on
``cuda`` while the default device stays ``cpu``: a method that creates a tensor without
naming its backbone's device fails here, on the CPU, instead of there."""

import dataclasses

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from petlbench.config import available, load_suite
from petlbench.methods import registered
from petlbench.models.loader import load_architecture
from petlbench.models.vse import tiny_vse
from petlbench.registry import METHODS, NOTHING, MethodSpec, UnsupportedError
from petlbench.train import PlacementError, prepare, train_step
from petlbench.variants import load_variant

SUITE = load_suite("vl-retrieval")
IMAGE_SIZE = {"clip": 48, "vse": 64}  # the embedded CLIP's images; a CNN's multiple of 32 (UniPT's CNN variant)


SUITES = {"clip": SUITE, "vse": SUITE, "t5": load_suite("glue-embedded")}  # each family's task and training rules
SHIPPED = {"clip": "embedded-clip", "t5": "embedded-t5"}


def meta_backbone(family: str) -> nn.Module:
    with torch.device("meta"):
        return load_architecture(SHIPPED[family]).build("sdpa") if family in SHIPPED else tiny_vse()


def contract_variant(name: str):
    """The shipped variant, with LST's pruned initialisation by weight magnitude: the
    pruning runs (and builds its indices) without reading training data."""
    variant = load_variant(name)
    if registered()[variant.method].needs_data:
        variant = dataclasses.replace(variant, config=dataclasses.replace(variant.config, init="magnitude"))
    return variant


# Variants of a 12- or 24-block T5's taps, which the 3-block embedded T5 does not have (their
# code runs on the embedded T5 with every block tapped: lst-r8, sherl-r4, unipt-r4).
DEEPER_THAN_EMBEDDED = {"lst-glue", "lst-glue-large", "lst-glue-3b", "sherl-glue", "unipt-glue"}
# Every shipped variant on every family its method applies to with its configuration (deep
# prompts do not apply to T5, whose shallow variants cover the method there).
PAIRS = [
    (family, path.stem)
    for path in available("methods")
    for family in ("clip", "vse", "t5")
    if registered()[(variant := load_variant(path.stem)).method].unsupported_reason(family, variant.config) is None
    and not (family == "t5" and path.stem in DEEPER_THAN_EMBEDDED)
]


def _meta_batch(family: str, batch_size: int = 4, text_length: int = 12) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch_size, text_length, dtype=torch.long, device="meta")
    if family == "t5":
        target = torch.randint(40, (batch_size, 4), device="meta")
        return {"input_ids": torch.randint(40, (batch_size, text_length), device="meta"), "attention_mask": mask,
                "decoder_input_ids": target, "labels": target}  # fmt: skip
    size = IMAGE_SIZE[family]
    return {
        "pixel_values": torch.randn(batch_size, 3, size, size, device="meta"),
        "input_ids": torch.randint(40, (batch_size, text_length), device="meta"),
        "attention_mask": mask,
    }


@pytest.mark.parametrize("family, variant", PAIRS, ids=[f"{f}-{v}" for f, v in PAIRS])
def test_prepare_keeps_everything_on_the_backbone_device_and_a_step_runs_there(family, variant):
    suite = SUITES[family]
    model = prepare(meta_backbone(family), suite.train, contract_variant(variant), task=suite.task)
    off = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != "meta"]
    assert not off, f"not on the backbone's device: {off[:5]}"
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3, foreach=True)
    # Fake tensors on meta: transformers reads no mask values from them (it cannot), and a
    # tensor created on another device during the step meets a meta one and fails.
    with FakeTensorMode(allow_non_fake_inputs=True):
        train_step(model, _meta_batch(family), opt, task=suite.task)
    # AdamW's moments live beside their parameters (its step counters stay on the host unless fused)
    assert opt.state and all(s[key].device.type == "meta" for s in opt.state.values() for key in ("exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("variant", sorted(DEEPER_THAN_EMBEDDED))
def test_a_deeper_models_variant_does_not_apply_to_the_embedded_t5(variant):
    suite = SUITES["t5"]
    with pytest.raises(UnsupportedError, match=r"drop_layers=\[0, .*\] must index the stacks' blocks \(0..2\)"):
        prepare(meta_backbone("t5"), suite.train, contract_variant(variant), task=suite.task)


def test_every_registered_method_and_family_is_covered():
    assert {(family, load_variant(v).method) for family, v in PAIRS} == {
        (family, name) for name, spec in registered().items() for family in spec.families
    }


def test_prepare_names_the_first_tensor_left_on_another_device(monkeypatch):
    def misplaced(backbone, cfg):
        backbone.requires_grad_(False)
        backbone.stray = nn.Linear(2, 2)  # on the default device, not the backbone's
        return backbone

    spec = registered()["linear"]
    stray = MethodSpec("linear", spec.config_cls, spec.display, spec.group, spec.module, {"clip": NOTHING}, defines_head=True)
    stray.builder("clip")(misplaced)
    monkeypatch.setitem(METHODS, "linear", stray)
    with pytest.raises(PlacementError, match=r"stray\.weight is on cpu, the backbone on meta"):
        prepare(meta_backbone("clip"), SUITE.train, load_variant("linear"))
