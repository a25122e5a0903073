"""UniPT (dual-encoder variant): sizes in closed form, the truncated attention by hand, and
a backbone body that builds no autograd graph."""

import json
import math

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from petlbench import records
from petlbench.config import ConfigError
from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method
from petlbench.methods.unipt import LayerConfidence, UniPTTower
from petlbench.models.clip import TOWERS, ClipDualEncoder, TowerStates
from petlbench.models.loader import load_backbone
from petlbench.models.pooling import masked_mean
from petlbench.tasks.retrieval.task import contrastive_loss
from petlbench.variants import load_variant
from tests.conftest import tiny_args
from tests.saved import saved_bytes

F32 = 4


def _tower_params(layers: int, d: int, d_out: int, m: int) -> int:
    """Trainable parameters of one tower, every Linear with bias."""
    reduce = (layers + 1) * (d * m + m)  # one d -> m per hidden state
    anchor = d_out * m + m
    confidence = m + 1  # shared by all layers
    up = m * d_out + d_out
    return reduce + anchor + confidence + up


def _dims(clip_config) -> dict[str, tuple[int, int, int]]:
    """(L, d, d_out) per tower; d_out is the model's projection width (the sub-configs
    carry a projection_dim of their own that the model does not use)."""
    towers = {"vision": clip_config.vision_config, "text": clip_config.text_config}
    return {name: (c.num_hidden_layers, c.hidden_size, clip_config.projection_dim) for name, c in towers.items()}


def _unipt(backbone, *overrides: str):
    return get_method("unipt").apply(backbone, load_variant("unipt", list(overrides)).config)


@pytest.fixture
def backbone():
    model = load_backbone("embedded-clip", "sdpa", torch.device("cpu")).backbone
    return model


@pytest.fixture
def batch():
    tok = load_backbone("embedded-clip", "sdpa", torch.device("cpu")).tokenizer
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    enc = tok(["a big red circle in the middle", "a small blue square at the top left", "we see"],
              padding="max_length", max_length=40, return_tensors="pt")  # fmt: skip
    return {"vision": {"pixel_values": pixels}, "text": {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}}


def _encode(model, tower, inputs):
    return model.encode_image(**inputs) if tower == "vision" else model.encode_text(**inputs)


@pytest.mark.parametrize("downsample", [1, 2])
def test_trainable_count_on_the_shipped_model(backbone, downsample):
    dims = _dims(backbone.clip.config)
    model = _unipt(backbone, f"method.downsample={downsample}")
    for tower, (layers, d, d_out) in dims.items():
        assert sum(p.numel() for p in model.towers[tower].parameters()) == _tower_params(layers, d, d_out, d_out // downsample)
    expected = sum(_tower_params(layers, d, d_out, d_out // downsample) for layers, d, d_out in dims.values())
    assert parameter_counts(model)["params_trainable"] == expected
    assert all(not p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("downsample", [0, 3])
def test_downsample_must_divide_the_embedding_width(backbone, downsample):
    with pytest.raises(ConfigError, match=f"downsample={downsample}"):
        _unipt(backbone, f"method.downsample={downsample}")  # the shipped model embeds in 64


def test_trainable_count_at_clip_vit_b32_size():
    config = CLIPConfig(
        vision_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=32, image_size=224),
        text_config=dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048, max_position_embeddings=77, vocab_size=49408),
        projection_dim=512,
    )  # fmt: skip
    with torch.device("meta"):
        model = _unipt(ClipDualEncoder(CLIPModel(config)))
    authors_millions = {"vision": 5.6, "text": 3.9, "total": 9.6}  # docs/methods.md, counted from the authors' code
    counts = {tower: sum(p.numel() for p in model.towers[tower].parameters()) for tower in TOWERS}
    counts["total"] = parameter_counts(model)["params_trainable"]
    expected = {tower: _tower_params(*dims, m=512) for tower, dims in _dims(config).items()}
    expected["total"] = expected["vision"] + expected["text"]
    for name in ("vision", "text", "total"):
        print(f"UniPT ViT-B/32, m=512, {name}: {counts[name]:,} trainable (authors: ~{authors_millions[name]}M)")
    assert counts == expected
    assert {name: round(n / 1e6, 1) for name, n in counts.items()} == authors_millions


def test_truncated_attention_and_pooled_token_by_hand():
    # One hidden state, every map the identity except the anchor's, so that the output is
    # e + ReLU(m_0) and m_0 can be followed by hand.
    unipt = UniPTTower(n_states=1, hidden=2, embed=2, width=2)
    with torch.no_grad():
        for linear in (unipt.reduce[0][1], unipt.anchor[1], unipt.up[1]):
            linear.weight.copy_(torch.eye(2))
            linear.bias.zero_()
        unipt.anchor[1].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))  # e = (1, 1) -> a = (2, -1)
    tokens = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [4.0, 4.0]],  # scores 2, -1, 5 and 4 (padded)
            [[0.0, 1.0], [0.0, 2.0], [1.0, 3.0], [5.0, 0.0]],  # scores -1, -2, -1 and 10 (padded)
        ]
    )  # fmt: skip
    states = TowerStates((tokens,), token_mask=torch.tensor([[True, True, True, False]] * 2), pool_index=torch.tensor([2, 0]))
    out = unipt(states, torch.ones(2, 2))
    # Sample 0: padding zeroed -> (2, -1, 5, 0); ReLU -> (2, 0, 5, 0); L1 -> (2/7, 0, 5/7, 0);
    # weighted tokens 2/7 (1, 0) + 5/7 (3, 1) = (17/7, 5/7); plus the pooled token (3, 1).
    # Sample 1: every real score <= 0, so the weights are all zero (the clamped norm keeps
    # them finite) and only the pooled token (0, 1) remains; unmasked, the padded token
    # would have taken all the weight and given (5, 0).
    m = torch.tensor([[17 / 7 + 3, 5 / 7 + 1], [0.0, 1.0]])
    torch.testing.assert_close(out, 1 + m)


def test_confidence_weighs_layers_by_softmax_over_masked_means_by_hand():
    confidence = LayerConfidence(width=2)
    with torch.no_grad():
        confidence.score.weight.copy_(torch.tensor([[1.0, 1.0]]))
        confidence.score.bias.fill_(5.0)  # a shift: the softmax ignores it
    anchor = torch.tensor([[1.0, 2.0]])
    mask = torch.tensor([[True, True, False]])
    layers = [torch.tensor([[[1.0, 0.0], [1.0, 0.0], [9.0, 9.0]]]), torch.tensor([[[0.0, 2.0], [0.0, 0.0], [9.0, 9.0]]])]
    summaries = [masked_mean(tokens, mask) for tokens in layers]
    torch.testing.assert_close(summaries, [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])])  # the padded (9, 9) left out
    merged = [torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 10.0]])]
    w1 = 1 / (1 + math.e)  # anchor ⊙ summary -> (1, 0) and (0, 2) -> scores 1 and 2 -> softmax (1/(1+e), e/(1+e))
    torch.testing.assert_close(confidence(anchor, summaries, merged), torch.tensor([[10 * w1, 10 * (1 - w1)]]))


def test_gradient_reaches_every_unipt_parameter_and_no_backbone_parameter(backbone, batch):
    model = _unipt(backbone)
    contrastive_loss(_encode(model, "vision", batch["vision"]), _encode(model, "text", batch["text"]), model.logit_scale).backward()
    assert all(p.grad is None for p in backbone.parameters())
    for name, p in model.towers.named_parameters():
        assert p.grad is not None, name
        if name.endswith("confidence.score.bias"):
            assert p.grad.abs().max() < 1e-6  # the softmax over layers ignores a shift
        else:
            assert p.grad.abs().sum() > 0, name


def test_projections_learn_when_the_suite_trains_the_head(backbone, batch):
    model = _unipt(backbone)
    for projection in backbone.projections():
        projection.requires_grad_(True)  # what train.run does for `train.head: trainable`
    contrastive_loss(_encode(model, "vision", batch["vision"]), _encode(model, "text", batch["text"]), model.logit_scale).backward()
    assert all(projection.weight.grad.abs().sum() > 0 for projection in backbone.projections())


def _saved_bytes(model, tower, inputs) -> int:
    return saved_bytes(lambda: _encode(model, tower, inputs), model)


def _budget_bytes(b: int, n: int, layers: int, d: int, d_out: int, m: int) -> tuple[int, int]:
    """(hidden-state bytes, bound on all saved bytes) for one tower; what the backward of
    each UniPT operation needs, at 4 bytes an element (masks and indices included)."""
    states = layers + 1
    hidden = states * b * n * d  # ReLU(h_i), the input of each per-layer Linear
    per_state = b * n * m  # reduced tokens t_i
    per_state += 4 * b * n  # padding mask, truncated scores, normalised weights, mask of the mean
    per_state += 2 * b * m  # token mean, anchor ⊙ mean
    per_state += 3 * b  # L1 norm before and after the clamp, token count
    indices = 2 * 2 * b  # rows and pool positions, int64
    tail = b * d_out + b * m  # ReLU(e), the anchor
    tail += b * states + b * states * m + b * m  # confidence weights, stacked m_i, ReLU(M)
    return F32 * hidden, F32 * (hidden + states * per_state + indices + tail)


def _embeddings(backbone) -> list[torch.nn.Module]:
    return [backbone.clip.vision_model.embeddings, backbone.clip.text_model.embeddings]


@pytest.mark.parametrize("tower", TOWERS)
def test_backbone_body_builds_no_graph_even_after_a_trainable_module(backbone, batch, tower):
    model = _unipt(backbone)
    for embeddings in _embeddings(backbone):
        embeddings.requires_grad_(True)  # a trainable module before the body (LST's trap)
    inputs = batch[tower]
    states = backbone.tower_states(tower, **inputs)
    layers, d, d_out = _dims(backbone.clip.config)[tower]
    b, n = states.token_mask.shape
    hidden, budget = _budget_bytes(b, n, layers, d, d_out, d_out)

    assert hidden <= _saved_bytes(model, tower, inputs) <= budget

    backbone.frozen_states = backbone.tower_states  # the same model without the explicit no_grad
    assert _saved_bytes(model, tower, inputs) > 2 * budget


def test_short_end_to_end_run(cli, tmp_path, backbone):
    code, _, err = cli("run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(tmp_path), "--methods", "unipt", *tiny_args())
    assert code == 0, err
    rec = json.loads(records.record_path(tmp_path, "unipt", 0).read_text())
    assert rec["run"]["status"] == "ok"
    downsample = load_variant("unipt").config.downsample
    dims = _dims(backbone.clip.config).values()
    assert rec["cost"]["params_trainable"] == sum(_tower_params(layers, d, d_out, d_out // downsample) for layers, d, d_out in dims)
