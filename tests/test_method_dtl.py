"""DTL and DTL+: sizes in closed form, an exact start at the backbone, and the injection
rule checked against the library's own hidden states."""

import copy

import pytest
import torch
import torch.nn.functional as F

from petlbench.config import ConfigError
from petlbench.measure.params import parameter_counts
from petlbench.methods import get_method
from petlbench.methods.dtl import first_injection
from petlbench.models.loader import load_architecture, load_backbone
from petlbench.variants import load_variant
from tests.inputs import shipped_batch


def _apply(variant: str, backbone, *overrides: str):
    v = load_variant(variant, list(overrides))
    return get_method(v.method).apply(backbone, v.config)


def test_first_injection_is_the_start_of_the_last_half():
    cfg = load_variant("dtl").config
    assert first_injection(cfg, 12) == 6  # blocks 6..11 of ViT-B's 12 (docs/methods.md)
    assert first_injection(cfg, 4) == 2
    assert first_injection(load_variant("dtl", ["method.late=1.0"]).config, 12) == 0


@pytest.mark.parametrize("variant, conv", [("dtl", 0), ("dtl-plus", 3 * 3 * 768)])
def test_trainable_count_at_clip_vit_b32_size(variant, conv):
    """docs/methods.md, r = 2: 61,440 (vision 36,864 = 12·2·2·768, text 24,576); DTL+'s shared
    depthwise 3x3 conv adds 6,912 at d = 768."""
    with torch.device("meta"):
        model = _apply(variant, load_architecture("clip-vit-base-patch32").build("sdpa"))
    counts = {tower: sum(p.numel() for p in path.parameters()) for tower, path in model.paths.items()}
    assert counts == {"vision": 12 * 2 * 2 * 768, "text": 12 * 2 * 2 * 512} == {"vision": 36_864, "text": 24_576}
    assert parameter_counts(model)["params_trainable"] == 61_440 + conv
    if variant == "dtl-plus":
        assert model.grid.conv.weight.numel() == 6_912


@pytest.mark.parametrize("variant", ["dtl", "dtl-plus"])
def test_starts_exactly_at_the_backbone(variant):
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    reference = copy.deepcopy(loaded.backbone).eval()
    model = _apply(variant, loaded.backbone).eval()
    pixels, ids, mask = shipped_batch(loaded)
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), reference.encode_image(pixels))
        assert torch.equal(model.encode_text(ids, mask), reference.encode_text(ids, mask))


def _randomise_b(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for path in model.paths.values():
            for up in path.up:
                up.weight.copy_(0.05 * torch.randn(up.weight.shape, generator=generator))


@pytest.mark.parametrize("variant", ["dtl", "dtl-plus"])
def test_injection_after_the_last_block_by_hand(variant):
    """With the side path added back after the last block only, every block reads the
    backbone's own stream: the tower's output is the library's last hidden state plus
    swish(sum_j B_j A_j h_j), CLS unfiltered and the patches through the depthwise conv
    (DTL+), which this test applies with F.conv2d itself."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    backbone = loaded.backbone
    depth = len(backbone.blocks()["vision"])
    model = _apply(variant, backbone, f"method.late={1 / depth}").eval()
    _randomise_b(model)
    pixels, ids, mask = shipped_batch(loaded)
    beta = load_variant(variant).config.beta
    with torch.no_grad():
        for tower, inputs in (("vision", {"pixel_values": pixels}), ("text", {"input_ids": ids, "attention_mask": mask})):
            states = backbone.tower_states(tower, **inputs)
            path = model.paths[tower]
            running = sum(path.up[j].weight @ path.down[j].weight @ h.unsqueeze(-1) for j, h in enumerate(states.hidden_states[:-1]))
            side = running.squeeze(-1) * torch.sigmoid(beta * running.squeeze(-1))
            if variant == "dtl-plus" and tower == "vision":
                grid = int((side.shape[1] - 1) ** 0.5)
                patches = side[:, 1:].transpose(1, 2).reshape(len(side), -1, grid, grid)
                conv = model.grid.conv
                filtered = F.conv2d(patches, conv.weight, padding=conv.kernel_size[0] // 2, groups=conv.groups)
                side = torch.cat([side[:, :1], filtered.flatten(2).transpose(1, 2)], dim=1)
            expected = states.hidden_states[-1] + side
            torch.testing.assert_close(model.tokens(tower, **inputs), expected, rtol=1e-5, atol=1e-5)


def test_dtl_plus_derives_its_grid_from_the_input():
    """The grid is the input's size over the patch size: a 64x64 input's 8x8 patches are
    filtered as such (the conv by hand), and tokens that do not form that grid are refused."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    model = _apply("dtl-plus", loaded.backbone)
    patch, d = loaded.backbone.clip.config.vision_config.patch_size, loaded.backbone.clip.config.vision_config.hidden_size
    assert model.grid.patch_size == patch
    tokens = torch.randn(2, 1 + (64 // patch) ** 2, d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.grid(tokens, (64, 64))
        grid = tokens[:, 1:].transpose(1, 2).reshape(2, d, 64 // patch, 64 // patch)
        expected = F.conv2d(grid, model.grid.conv.weight, padding=1, groups=d).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out[:, 1:], expected)
    assert torch.equal(out[:, :1], tokens[:, :1])
    with pytest.raises(ConfigError, match="do not form the 6x6 grid"):
        model.grid(tokens, (48, 48))
    with pytest.raises(ConfigError, match="dtl-plus: conv_kernel=4 must be odd"):
        _apply("dtl-plus", load_backbone("embedded-clip", "sdpa", torch.device("cpu")).backbone, "method.conv_kernel=4")


def test_default_injections_by_hand():
    """The default rule (several injections, each later block reading the injected stream,
    the running sum carried across them), written out over the library's own vision
    modules: embeddings, pre-norm, `encoder.layers`, post-norm at CLS, projection."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    model = _apply("dtl", loaded.backbone).eval()
    _randomise_b(model)
    pixels = shipped_batch(loaded)[0]
    vision, path = loaded.backbone.clip.vision_model, model.paths["vision"]
    layers = vision.encoder.layers
    beta, first = load_variant("dtl").config.beta, len(layers) - len(layers) // 2
    with torch.no_grad():
        x = vision.pre_layrnorm(vision.embeddings(pixels))
        running = torch.zeros_like(x)
        for j, layer in enumerate(layers):
            running = running + x @ path.down[j].weight.T @ path.up[j].weight.T
            x = layer(x, None)
            if j >= first:
                x = x + running * torch.sigmoid(beta * running)
        expected = loaded.backbone.clip.visual_projection(vision.post_layernorm(x[:, 0]))
        torch.testing.assert_close(model.encode_image(pixels), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_learns_once_b_is_nonzero():
    """At init B = 0, so A's gradient is exactly zero while B's is not; once B has moved,
    both learn."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    model = _apply("dtl", loaded.backbone)
    pixels, ids, mask = shipped_batch(loaded)

    def backward():
        model.zero_grad(set_to_none=True)
        (model.encode_image(pixels).sum() + model.encode_text(ids, mask).sum()).backward()

    backward()
    for path in model.paths.values():
        assert all(not down.weight.grad.any() for down in path.down)
        assert any(up.weight.grad.abs().sum() > 0 for up in path.up)
    _randomise_b(model)
    backward()
    for path in model.paths.values():
        assert all(down.weight.grad.abs().sum() > 0 for down in path.down)
        assert all(up.weight.grad.abs().sum() > 0 for up in path.up)
