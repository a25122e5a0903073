"""Res-Tuning-Bypass: sizes in closed form, the bypass recurrence by hand, a body that builds
no graph, and saved bytes within docs/methods.md's formula."""

import pytest
import torch

from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method
from petlbench.methods.res_tuning import Bypass
from petlbench.models.clip import TOWERS
from petlbench.models.loader import load_architecture, load_backbone
from petlbench.variants import load_variant
from tests.inputs import tower_inputs
from tests.saved import modules_that_save, saved_bytes

F32, I64 = 4, 8


def _apply(backbone, *overrides: str):
    return get_method("res-tuning-bypass").apply(backbone, load_variant("res-tuning-bypass", list(overrides)).config)


def _per_block(d: int, bottleneck: int) -> int:
    """Two adapters, each d -> l and l -> d with biases."""
    return 2 * (2 * d * bottleneck + bottleneck + d)


def test_trainable_count_at_clip_vit_b32_size():
    """docs/methods.md, l = 32: 1,998,336 trainable (vision 1,198,848, text 799,488)."""
    with torch.device("meta"):
        model = _apply(load_architecture("clip-vit-base-patch32").build("sdpa"))
    counts = {tower: sum(p.numel() for p in bypass.parameters()) for tower, bypass in model.bypasses.items()}
    assert counts == {"vision": 12 * _per_block(768, 32), "text": 12 * _per_block(512, 32)}
    assert counts == {"vision": 1_198_848, "text": 799_488}
    assert parameter_counts(model)["params_trainable"] == 1_998_336


def test_bypass_recurrence_by_hand():
    torch.manual_seed(0)
    bypass = Bypass(depth=3, width=8, bottleneck=2, zero_init_last=False)
    hidden = [torch.randn(2, 5, 8) for _ in range(4)]

    def adapter(a, x):  # x + up(GELU(down(x))), written out
        return x + torch.nn.functional.gelu(x @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias

    expected = hidden[0]
    for i in range(3):
        expected = adapter(bypass.lateral[i], hidden[i + 1]) + adapter(bypass.vertical[i], expected)
    torch.testing.assert_close(bypass(tuple(hidden)), expected)


def test_init_and_zero_init_last():
    torch.manual_seed(0)
    bypass = Bypass(depth=4, width=64, bottleneck=32, zero_init_last=True)
    for adapter in (bypass.lateral[-1], bypass.vertical[-1]):
        assert not adapter.up.weight.any() and not adapter.up.bias.any()
    first = bypass.lateral[0]
    bound = (6 / (64 + 32)) ** 0.5  # Xavier-uniform
    assert first.down.weight.abs().max() <= bound and first.down.weight.abs().max() > 0.9 * bound
    assert 0 < first.down.bias.abs().max() < 1e-5  # N(0, 1e-6)


def test_at_init_the_bypass_sums_the_hidden_states_when_its_adapters_are_identities():
    """The design docs/methods.md notes: with every adapter the identity, b_L is the sum of
    h_0..h_L, not h_L; the tower's head then reads that sum."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    model = _apply(loaded.backbone).eval()
    for bypass in model.bypasses.values():
        for adapter in [*bypass.lateral, *bypass.vertical]:
            torch.nn.init.zeros_(adapter.up.weight)
            torch.nn.init.zeros_(adapter.up.bias)
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = loaded.backbone.tower_states("vision", pixel_values=pixels)
        expected = loaded.backbone.tower_head("vision", sum(states.hidden_states), pool_index=states.pool_index)
        torch.testing.assert_close(model.encode_image(pixels), expected)


@pytest.mark.parametrize("tower", TOWERS)
def test_no_backbone_body_module_saves_and_saved_bytes_follow_the_formula(tower):
    """docs/methods.md: saved ≈ 2L·B·N·d (lateral and vertical inputs) + 4L·B·N·l (GELU input
    and output of every adapter) + the head's: the final norm's input (the pooled token),
    mean and rstd, and the pooling indices; the frozen projection needs only its weight."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    backbone = loaded.backbone
    model = _apply(backbone).train()
    inputs = tower_inputs(loaded, tower)

    def encode():
        return model.encode(tower, **inputs)

    tower_model = backbone.clip.vision_model if tower == "vision" else backbone.clip.text_model
    body = [
        (f"{tower}.{name}", module) for name, module in tower_model.named_modules() if "layernorm" not in name and "layer_norm" not in name
    ]
    assert modules_that_save(encode, body) == set()

    states = backbone.tower_states(tower, **inputs)
    depth, (b, n, d) = len(states.hidden_states) - 1, states.hidden_states[0].shape
    bottleneck = load_variant("res-tuning-bypass").config.bottleneck
    bypass = F32 * (2 * depth * b * n * d + 4 * depth * b * n * bottleneck)
    head = F32 * (b * d + 2 * b) + I64 * 2 * b
    assert saved_bytes(encode, model) == bypass + head
