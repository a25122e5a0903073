"""SHERL: sizes in closed form (CLIP ViT-B/32 against docs/methods.md; the VSE size computed),
the anti-redundancy aggregation and token pooling by hand, and what each form keeps of the
backbone for backward."""

import pytest
import torch
from transformers import BertConfig, ResNetConfig

from petlbench.config import ConfigError
from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method
from petlbench.methods.sherl import EPS, AntiRedundancy, SherlImage, SherlText, SherlTower
from petlbench.models.backbone import TowerStates
from petlbench.models.clip import TOWERS
from petlbench.models.loader import load_architecture, load_backbone
from petlbench.models.vse import tiny_vse, vse_from_configs
from petlbench.registry import UnsupportedError
from petlbench.variants import load_variant
from tests.inputs import tower_inputs
from tests.saved import modules_that_save, saved_bytes

F32 = 4


def _apply(backbone, *overrides: str):
    return get_method("sherl").apply(backbone, load_variant("sherl", list(overrides)).config)


def _clip_tower(taps: int, d: int, p: int, m: int, gate: bool = False) -> int:
    """Per-tap Linear d -> m and token-score Linear m -> 1, the guide p -> m, the shared
    layer score m -> 1, the output m -> p; every Linear with bias; one gate per tap."""
    return taps * (d * m + m) + taps * (m + 1) + (p * m + m) + (m + 1) + (m * p + p) + (taps if gate else 0)


@pytest.mark.parametrize("gate", [False, True])
def test_trainable_count_at_clip_vit_b32_size(gate):
    """docs/methods.md, m = 512: 9,597,980 (vision 5,650,958, text 3,947,022; +13 per tower with
    `pool_gate`)."""
    with torch.device("meta"):
        model = _apply(load_architecture("clip-vit-base-patch32").build("sdpa"), f"method.pool_gate={str(gate).lower()}")
    counts = {tower: sum(p.numel() for p in model.towers[tower].parameters()) for tower in TOWERS}
    assert counts == {"vision": _clip_tower(13, 768, 512, 512, gate), "text": _clip_tower(13, 512, 512, 512, gate)}
    assert counts == {"vision": 5_650_958 + 13 * gate, "text": 3_947_022 + 13 * gate}
    assert parameter_counts(model)["params_trainable"] == 9_597_980 + 26 * gate


def test_trainable_count_on_the_shipped_model():
    backbone = load_backbone("embedded-clip", "sdpa", torch.device("cpu")).backbone
    model = _apply(backbone)
    config = backbone.clip.config
    p = config.projection_dim
    expected = sum(_clip_tower(c.num_hidden_layers + 1, c.hidden_size, p, p) for c in (config.vision_config, config.text_config))
    assert parameter_counts(model)["params_trainable"] == expected


def _bert_side(taps: int, d: int, m: int) -> int:
    """Linear d -> m + LayerNorm(m) per tap, the shared score m -> 1, Linear m -> d +
    LayerNorm(d), kappa."""
    return taps * (d * m + m + 2 * m) + (m + 1) + (m * d + d + 2 * d) + 1


def _resnet_side(channels: list[int], m: int) -> int:
    """Conv1x1 (no bias) + BatchNorm(m) per tap, the shared score m -> 1, Conv1x1 m -> C5
    (no bias) + BatchNorm(C5), kappa."""
    return sum(c * m + 2 * m for c in channels) + (m + 1) + (m * channels[-1] + 2 * channels[-1]) + 1


def test_vse_side_counts_at_the_authors_size():
    """BERT-base (12 layers, d = 768) with m = 512 (joint width 1024 / 2): the authors' BERT
    side is 5,133,058. ResNet-50-style widths (256, 512, 1024, 2048): 3,023,362 without
    conv biases (docs/methods.md: about 3.02M). Total at the VSE size: 8,156,420."""
    text, image = SherlText(12, 768, 512), SherlImage([256, 512, 1024, 2048], 512)
    text_count, image_count = (sum(p.numel() for p in part.parameters()) for part in (text, image))
    assert text_count == _bert_side(12, 768, 512) == 5_133_058
    assert image_count == _resnet_side([256, 512, 1024, 2048], 512) == 3_023_362
    print(f"SHERL at the VSE size (BERT-base, ResNet-50 widths, m = 512): {text_count + image_count:,} trainable")


def test_tiny_vse_count_in_closed_form():
    backbone = tiny_vse()
    model = _apply(backbone)
    m = backbone.embed_dim // 2
    text = backbone.bert.config
    expected = _bert_side(text.num_hidden_layers, text.hidden_size, m) + _resnet_side(list(backbone.resnet.config.hidden_sizes), m)
    assert parameter_counts(model)["params_trainable"] == expected


def test_anti_redundancy_by_hand():
    torch.manual_seed(0)
    aggregate = AntiRedundancy(4)
    f, g = torch.randn(3, 5, 4), torch.randn(3, 4)
    with torch.no_grad():
        out = aggregate(f, g)
        for b in range(3):
            rho = [
                sum(max(0.0, float(f[b, i] @ f[b, j] / ((f[b, i].norm() + EPS) * (f[b, j].norm() + EPS)))) for j in range(5))
                for i in range(5)
            ]
            raw = [max(0.0, float(aggregate.score(f[b, i] * g[b]))) / (rho[i] + EPS) for i in range(5)]
            weights = [r / (sum(raw) + EPS) for r in raw]
            expected = sum(w * f[b, i] for i, w in enumerate(weights)) + g[b]
            torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)


def test_clip_tower_by_hand():
    """One sample, two taps, padding on the last token, pooling at token 1."""
    torch.manual_seed(0)
    tower = SherlTower(n_taps=2, hidden=6, embed=5, width=4, pool_gate=False)
    hidden = tuple(torch.randn(1, 3, 6) for _ in range(2))
    mask, pool = torch.tensor([[True, True, False]]), torch.tensor([1])
    e = torch.randn(1, 5)
    with torch.no_grad():
        out = tower(TowerStates(hidden, mask, pool), e)
        g = tower.guide[1](e[0].relu())
        pooled = []
        for i in range(2):
            t = tower.reduce[i][1](hidden[i][0].relu())  # (3, m)
            s = [max(0.0, float(tower.token_scores[i](g * t[n])) * float(mask[0, n])) for n in range(3)]
            weights = [x / (sum(abs(y) for y in s) + EPS) for x in s]
            pooled.append(sum(w * t[n] for n, w in enumerate(weights)) + t[1])
        a = tower.aggregate(torch.stack(pooled).unsqueeze(0), g.unsqueeze(0))[0]
        torch.testing.assert_close(out[0], e[0] + tower.up[1](a.relu()))


def test_clip_output_is_the_frozen_embedding_plus_the_side_output():
    """Differs from the backbone at init by design (a random output layer); with that layer
    zeroed, exactly the frozen embedding."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    model = _apply(loaded.backbone).eval()
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = loaded.backbone.encode_image(pixels)
        assert not torch.allclose(model.encode_image(pixels), reference)
        for tower in model.towers.values():
            torch.nn.init.zeros_(tower.up[1].weight)
            torch.nn.init.zeros_(tower.up[1].bias)
        assert torch.equal(model.encode_image(pixels), reference)


@pytest.mark.parametrize("tower", TOWERS)
def test_clip_body_saves_nothing_and_the_side_saves_about_the_formula(tower):
    """docs/methods.md: saved ≈ (L+1)·B·N·(d + 2m) per tower (the ReLU'd taps, t_i, g ⊙ t_i),
    nothing from the backbone."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    backbone = loaded.backbone
    model = _apply(backbone).train()
    inputs = tower_inputs(loaded, tower)

    def encode():
        return model.encode(tower, **inputs)

    tower_model = backbone.clip.vision_model if tower == "vision" else backbone.clip.text_model
    assert modules_that_save(encode, list(tower_model.named_modules())) == set()
    states = backbone.tower_states(tower, **inputs)
    taps, (b, n, d) = len(states.hidden_states), states.hidden_states[0].shape
    m = backbone.embed_dim
    formula = F32 * taps * b * n * (d + 2 * m)
    saved = saved_bytes(encode, model)
    print(f"{tower}: saved {saved:,} B, formula {formula:,} B")
    assert formula <= saved <= 1.1 * formula  # the rest: per-token scores and weights (B·N per tap), per-sample vectors


def _vse_batch(size: int = 64):
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return torch.randn(3, 3, size, size, generator=generator), torch.randint(0, 100, (3, 10), generator=generator), mask


def test_vse_keeps_exactly_the_last_bert_block_and_the_last_layer4_unit():
    backbone = tiny_vse()
    model = _apply(backbone).train()
    pixels, ids, mask = _vse_batch()
    units = [(f"layer{s + 1}.{u}", unit) for s, stage in enumerate(backbone.resnet.encoder.stages) for u, unit in enumerate(stage.layers)]
    body = [("stem", backbone.resnet.embedder), *units, ("embeddings", backbone.bert.embeddings)]
    body += [(f"bert.{i}", layer) for i, layer in enumerate(backbone.bert.encoder.layer)]
    last_unit = f"layer4.{len(backbone.resnet.encoder.stages[-1].layers) - 1}"
    last_layer = f"bert.{len(backbone.bert.encoder.layer) - 1}"
    assert modules_that_save(lambda: model.encode_image(pixels), body) == {last_unit}
    assert modules_that_save(lambda: model.encode_text(ids, mask), body) == {last_layer}
    assert not any(m.training for m in backbone.modules())  # a frozen feature extractor
    assert model.image.reduce[0][1].training  # the side BatchNorms train


def test_vse_side_output_alone_feeds_the_last_units_at_init():
    """kappa = 0: tanh(0) = 0, so the skip from h_{L-1} (h4) is off at init."""
    backbone = tiny_vse()
    model = _apply(backbone)
    assert model.text.kappa.item() == 0.0 and model.image.kappa.item() == 0.0
    pixels, ids, mask = _vse_batch()
    model.eval()
    with torch.no_grad():
        a = model.encode_text(ids, mask)
        model.text.kappa.fill_(0.1)
        assert not torch.allclose(model.encode_text(ids, mask), a)


def test_a_layer4_of_one_unit_is_unsupported_with_the_reason():
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic")
    bert = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(UnsupportedError, match="taps every layer4 unit but the last.*has 1 unit"):
        _apply(vse_from_configs(resnet, bert, 32))


def test_vse_window_sizes_come_from_the_maps():
    model = _apply(tiny_vse())
    with pytest.raises(ConfigError, match=r"sherl \(CNN form\): a 48x48 input"):
        model.encode_image(_vse_batch(48)[0])
    assert model.encode_image(_vse_batch(96)[0]).shape == (3, 32)
