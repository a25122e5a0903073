"""Baselines train exactly what docs/methods.md says, counted in closed form from the config."""

import pytest
import torch

from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method
from petlbench.models.loader import load_backbone
from petlbench.variants import load_variant


def _block_params(d: int, d_ff: int) -> int:
    attention = 4 * (d * d + d)  # q, k, v, out projections with bias
    mlp = d * d_ff + d_ff + d_ff * d + d
    norms = 2 * 2 * d
    return attention + mlp + norms


@pytest.fixture
def backbone():
    model = load_backbone("embedded-clip", "sdpa", torch.device("cpu")).backbone
    return model


def _dims(backbone):
    cfg = backbone.clip.config
    v, t = cfg.vision_config, cfg.text_config
    heads = cfg.projection_dim * (v.hidden_size + t.hidden_size)  # bias-free projections
    return v, t, heads


def test_linear_trains_exactly_the_projections(backbone):
    _, _, heads = _dims(backbone)
    model = get_method("linear").apply(backbone, load_variant("linear").config)
    assert parameter_counts(model)["params_trainable"] == heads


@pytest.mark.parametrize("k", [1, 2])
def test_partial_trains_last_k_blocks_norms_and_projections(backbone, k):
    v, t, heads = _dims(backbone)
    model = get_method("partial").apply(backbone, load_variant("partial", [f"method.k={k}"]).config)
    expected = k * (_block_params(v.hidden_size, v.intermediate_size) + _block_params(t.hidden_size, t.intermediate_size))
    expected += 2 * v.hidden_size + 2 * t.hidden_size + heads  # final LayerNorms
    assert parameter_counts(model)["params_trainable"] == expected


def test_full_trains_everything(backbone):
    model = get_method("full").apply(backbone, load_variant("full").config)
    counts = parameter_counts(model)
    assert counts["params_trainable"] == counts["params_total"] == sum(p.numel() for p in backbone.parameters())
    assert counts["trainable_state_bytes"] == 4 * counts["params_total"]
