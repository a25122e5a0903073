"""Backbone-internal methods (adapters, BitFit, LoRA): what trains, counted in closed form
from the model config; the adapted model starts as the backbone; the gradient reaches
exactly the trainable parameters; short end-to-end runs."""

import json

import pytest
import torch
import torch.nn.functional as F

from petlbench import records
from petlbench.config import ConfigError
from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method
from petlbench.models.loader import load_backbone
from petlbench.tasks.retrieval.task import contrastive_loss
from petlbench.variants import load_variant
from tests.conftest import tiny_args

VARIANTS = ["adapter", "adapter-pfeiffer", "bitfit", "lora"]


def _load():
    return load_backbone("embedded-clip", "sdpa", torch.device("cpu"))[:2]


def _apply(variant: str, overrides=()):
    backbone, _ = _load()
    v = load_variant(variant, list(overrides))
    return get_method(v.method).apply(backbone, v.config), v


# --------------------------------------------------------------------------- closed forms
# Each gives one tower's trainable parameters from its config (`c`: hidden_size d,
# intermediate_size d_ff, num_hidden_layers L) and the method's config.


def _adapter_count(cfg, tower, c):
    d, m = c.hidden_size, c.hidden_size // cfg.r
    per_adapter = d * m + m + m * d + d  # down and up, with biases
    return c.num_hidden_layers * {"houlsby": 2, "pfeiffer": 1}[cfg.placement] * per_adapter


def _bitfit_count(cfg, tower, c):
    d = c.hidden_size
    per_block = 4 * d + c.intermediate_size + d + 2 * d  # q, k, v, out; fc1, fc2; two LayerNorms
    return c.num_hidden_layers * per_block + {"vision": 2 * d, "text": d}[tower]  # pre+post LayerNorm; final LayerNorm


def _lora_count(cfg, tower, c):
    d, f = c.hidden_size, c.intermediate_size
    fans = {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "out_proj": (d, d), "fc1": (d, f), "fc2": (f, d)}
    return c.num_hidden_layers * sum(cfg.r * (fans[t][0] + fans[t][1]) for t in cfg.targets)  # A: r x in, B: out x r


CLOSED_FORM = {"adapter": _adapter_count, "bitfit": _bitfit_count, "lora": _lora_count}


def _expected(variant, clip_config) -> int:
    count = CLOSED_FORM[variant.method]
    return count(variant.config, "vision", clip_config.vision_config) + count(variant.config, "text", clip_config.text_config)


@pytest.fixture(scope="module")
def batch():
    """Three images and captions of the shipped model's sizes."""
    _, tok = _load()
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    enc = tok(["a big red circle in the middle", "a small blue square at the top left and a tiny white ring", "we see"],
              padding="max_length", max_length=40, return_tensors="pt")  # fmt: skip
    return pixels, enc["input_ids"], enc["attention_mask"]


def _embed(model, batch):
    pixels, ids, mask = batch
    return model.encode_image(pixels), model.encode_text(ids, mask)


def _perturb(params, seed=0):
    """Move parameters away from their initialisation (zero factors included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "variant, overrides",
    [
        ("adapter", []),
        ("adapter-pfeiffer", []),
        ("adapter", ["method.r=16"]),
        ("bitfit", []),
        ("lora", []),
        ("lora", ["method.targets=[q_proj,k_proj,v_proj,out_proj]", "method.r=4"]),
        ("lora", ["method.targets=[fc1,fc2]"]),
    ],
)
def test_trainable_count_matches_closed_form(variant, overrides):
    model, v = _apply(variant, overrides)
    assert parameter_counts(model)["params_trainable"] == _expected(v, model.clip.config)


@pytest.mark.parametrize("variant", VARIANTS)
def test_starts_as_the_backbone_and_acts_on_both_towers(variant, batch):
    reference, _ = _load()
    model, _ = _apply(variant)
    model.eval()
    with torch.no_grad():
        expected = _embed(reference.eval(), batch)
        for got, want in zip(_embed(model, batch), expected, strict=True):
            assert torch.equal(got, want)
        # the method's parameters are on both towers' forward path
        _perturb([p for p in model.parameters() if p.requires_grad])
        for got, want in zip(_embed(model, batch), expected, strict=True):
            assert not torch.allclose(got, want)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.slow
def test_gradient_reaches_exactly_the_trainable_parameters(variant, batch):
    model, _ = _apply(variant)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)

    def backward():
        opt.zero_grad(set_to_none=True)
        contrastive_loss(*_embed(model, batch), model.logit_scale).backward()

    backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    # Zero-initialised factors (adapter `up`, LoRA `B`) block their partner's gradient at
    # the start; after one update every trainable parameter must get a non-zero one.
    opt.step()
    backward()
    for name, p in model.named_parameters():
        assert not p.requires_grad or p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_adapters_sit_on_the_sublayer_outputs_before_the_residual_adds(placement):
    reference, _ = _load()
    model, _ = _apply("adapter", [f"method.placement={placement}", "method.activation=gelu"])
    _perturb([p for p in model.parameters() if p.requires_grad])
    block, plain = model.blocks()["vision"][1], reference.blocks()["vision"][1]

    def adapted(site, h):
        if not hasattr(block, f"{site}_adapter"):
            return h
        a = getattr(block, f"{site}_adapter")
        return h + F.linear(F.gelu(F.linear(h, a.down.weight, a.down.bias)), a.up.weight, a.up.bias)

    x = torch.randn(2, 5, plain.layer_norm1.normalized_shape[0], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = x + adapted("attention", plain.self_attn(plain.layer_norm1(x))[0])
        want = h + adapted("mlp", plain.mlp(plain.layer_norm2(h)))
        torch.testing.assert_close(block(x, None), want)
    assert hasattr(block, "attention_adapter") == (placement == "houlsby") and hasattr(block, "mlp_adapter")


@pytest.mark.parametrize(
    "variant, override, message",
    [
        ("adapter", "method.r=1000", "r=1000"),
        ("lora", "method.targets=[visual_projection]", "visual_projection"),
        ("lora", "method.targets=[]", "key 'targets': \\[\\] needs at least 1 item"),
        ("lora", "method.r=0", "key 'r': 0 must be at least 1"),
    ],
)
def test_bad_options_are_config_errors(variant, override, message):
    with pytest.raises(ConfigError, match=message):
        _apply(variant, [override])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.slow
def test_end_to_end_run_with_trainable_head_and_temperature(cli, tmp_path, variant):
    """The loop's head and temperature rules apply on top of the method (PEFT included)."""
    code, _, err = cli("run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(tmp_path), "--methods", variant,
                       *tiny_args("train.head=trainable", "train.temperature=trainable"))  # fmt: skip
    assert code == 0, err
    rec = json.loads(records.record_path(tmp_path, variant, 0).read_text())
    assert rec["run"]["status"] == "ok"
    assert rec["trainable_rule"] == {"head": "trainable", "temperature": "trainable"}
    clip_config = _load()[0].clip.config
    heads = clip_config.projection_dim * (clip_config.vision_config.hidden_size + clip_config.text_config.hidden_size)
    assert rec["cost"]["params_trainable"] == _expected(load_variant(variant), clip_config) + heads + 1  # + logit scale
