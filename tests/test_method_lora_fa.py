"""LoRA-FA: only B trains, the model starts exactly at the backbone, and what it saves for
backward is LoRA's minus the adapted blocks' shared input x."""

import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer

from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method
from petlbench.models.loader import load_architecture, load_backbone
from petlbench.models.vse import tiny_vse
from petlbench.variants import load_variant
from tests.inputs import shipped_batch
from tests.saved import saved_bytes

F32 = 4


def _apply(method: str, backbone):
    return get_method(method).apply(backbone, load_variant(method).config)


def _shipped():
    return load_backbone("embedded-clip", "sdpa", torch.device("cpu"))


def test_trainable_count_at_clip_vit_b32_size():
    """docs/methods.md: 245,760 trainable for q, v at r = 8 (vision 147,456, text 98,304)."""
    with torch.device("meta"):
        model = _apply("lora-fa", load_architecture("clip-vit-base-patch32").build("sdpa"))
    cfg = load_variant("lora-fa").config
    towers = model.blocks()
    counts = {
        tower: sum(p.numel() for p in blocks.parameters() if p.requires_grad) for tower, blocks in towers.items()
    }  # B is d x r per target and block
    assert counts == {"vision": 12 * len(cfg.targets) * 768 * cfg.r, "text": 12 * len(cfg.targets) * 512 * cfg.r}
    assert counts == {"vision": 147_456, "text": 98_304}
    assert parameter_counts(model)["params_trainable"] == 245_760


@pytest.mark.parametrize("family", ["clip", "vse"])
def test_only_b_trains_and_a_is_lora_s_random_init(family):
    backbone = _shipped().backbone if family == "clip" else tiny_vse()
    torch.manual_seed(0)
    model = _apply("lora-fa", backbone)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    for layer in layers:
        assert not any(p.requires_grad for p in layer.lora_A.parameters())
        assert all(p.requires_grad for p in layer.lora_B.parameters())
        assert layer.lora_A["default"].weight.abs().sum() > 0  # random, as LoRA's A
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_B." in n for n in trainable)


def test_starts_exactly_at_the_backbone():
    loaded = _shipped()
    reference = copy.deepcopy(loaded.backbone).eval()
    model = _apply("lora-fa", loaded.backbone).eval()
    pixels, ids, mask = shipped_batch(loaded)
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), reference.encode_image(pixels))
        assert torch.equal(model.encode_text(ids, mask), reference.encode_text(ids, mask))


def test_saves_lora_s_bytes_minus_one_block_input_per_adapted_block():
    """q and v read the same x: LoRA keeps it once per block for A's gradient, LoRA-FA not
    at all; everything else saved (A x for B's gradient, the backbone's own activations)
    is the same. The difference is exactly one B·N·d per block per tower."""
    loaded = _shipped()
    pixels, ids, mask = shipped_batch(loaded)
    saved = {}
    for method in ("lora", "lora-fa"):
        torch.manual_seed(0)
        model = _apply(method, _shipped().backbone).train()
        saved[method] = {
            "vision": saved_bytes(lambda m=model: m.encode_image(pixels), model),
            "text": saved_bytes(lambda m=model: m.encode_text(ids, mask), model),
        }
    config = loaded.backbone.clip.config
    b = len(pixels)
    tokens = {"vision": (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1, "text": ids.shape[1]}
    for tower, sub in (("vision", config.vision_config), ("text", config.text_config)):
        block_input = b * tokens[tower] * sub.hidden_size * F32
        print(f"{tower}: lora {saved['lora'][tower]:,} B, lora-fa {saved['lora-fa'][tower]:,} B saved")
        assert saved["lora"][tower] - saved["lora-fa"][tower] == sub.num_hidden_layers * block_input
