"""Prompt tuning: what trains, and the block walk checked against the library's own
encoder run with hand-built masks and hooks that splice the prompts in."""

import json
import math

import pytest
import torch

from petlbench import records
from petlbench.config import ConfigError
from petlbench.methods import get_method
from petlbench.methods.prompt import PromptedClip
from petlbench.models.loader import load_backbone
from petlbench.variants import load_variant
from tests.conftest import tiny_args

BOS, EOS, FIRST_WORD = 2, 3, 4  # the shipped tokenizer's ids (padding is 0)
TEXT_LENGTH = 40


def _backbone(attn="sdpa"):
    model = load_backbone("embedded-clip", attn, torch.device("cpu")).backbone
    return model.eval()


def _captions(lengths, seed=0):
    """BOS, random words, EOS, then padding up to `TEXT_LENGTH` (lengths count BOS and EOS)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), TEXT_LENGTH, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.cat([torch.tensor([BOS]), torch.randint(FIRST_WORD, 48, (n - 2,), generator=g), torch.tensor([EOS])])
        mask[row, :n] = 1
    return ids, mask


def _pixels(n=3, seed=0):
    return torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def _prompted(backbone, prompts=8, depth="deep"):
    return get_method("prompt").apply(backbone, load_variant("prompt", [f"method.prompts={prompts}", f"method.depth={depth}"]).config)


def _reference(backbone, prompts, tower, **inputs):
    """The prompted tower through the library's own `CLIPEncoder.forward`: the prompts are
    concatenated after the first token, deep sets overwrite that slice in a pre-hook of each
    later layer, and the text mask (causal and padding) is built here by hand. Returns the
    last-block tokens without the prompt positions, and the pooled, projected embedding."""
    clip = backbone.clip
    sets, p, _ = prompts.shape
    if tower == "vision":
        model, projection, norm = clip.vision_model, clip.visual_projection, clip.vision_model.post_layernorm
        x = model.pre_layrnorm(model.embeddings(inputs["pixel_values"]))
        mask, pool = None, torch.zeros(len(x), dtype=torch.long)
    else:
        model, projection, norm = clip.text_model, clip.text_projection, clip.text_model.final_layer_norm
        ids, padding = inputs["input_ids"], inputs["attention_mask"]
        x = model.embeddings(input_ids=ids)
        n = ids.shape[1] + p
        keys = torch.cat([padding[:, :1], torch.ones(len(ids), p, dtype=padding.dtype), padding[:, 1:]], dim=1).bool()
        allowed = torch.ones(n, n).tril().bool() & keys[:, None, :]
        mask = torch.zeros(len(ids), 1, n, n).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        pool = (ids == EOS).int().argmax(-1)
    b = len(x)
    x = torch.cat([x[:, :1], prompts[0].expand(b, -1, -1), x[:, 1:]], dim=1)

    def overwrite(i):
        def hook(_module, args):
            h = args[0].clone()
            h[:, 1 : 1 + p] = prompts[i]
            return (h, *args[1:])

        return hook

    handles = [model.encoder.layers[i].register_forward_pre_hook(overwrite(i)) for i in range(1, sets)]
    try:
        last = model.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    tokens = torch.cat([last[:, :1], last[:, 1 + p :]], dim=1)
    return tokens, projection(norm(tokens[torch.arange(b), pool]))


# ----------------------------------------------------------------------- what trains


@pytest.mark.parametrize("variant", ["prompt", "prompt-shallow"])
@pytest.mark.parametrize("p", [None, 12])
def test_trainable_count_in_closed_form(variant, p):
    cfg = load_variant(variant, [] if p is None else [f"method.prompts={p}"]).config
    backbone = _backbone()
    model = get_method("prompt").apply(backbone, cfg)
    clip_cfg = backbone.clip.config
    expected = 0
    for tower in (clip_cfg.vision_config, clip_cfg.text_config):
        sets = tower.num_hidden_layers if cfg.depth == "deep" else 1
        expected += sets * cfg.prompts * tower.hidden_size
    assert sum(t.numel() for t in model.parameters() if t.requires_grad) == expected
    assert cfg.prompts == (p or 8) and cfg.depth == ("deep" if variant == "prompt" else "shallow")


def test_at_least_one_prompt():
    with pytest.raises(ConfigError, match="prompts=0"):
        _prompted(_backbone(), prompts=0)


def test_vpt_initialisation_is_bounded_and_follows_the_global_seed():
    drawn = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        drawn.append(_prompted(_backbone()).prompts)
    assert torch.equal(drawn[0]["vision"], drawn[1]["vision"]) and not torch.equal(drawn[0]["vision"], drawn[2]["vision"])
    vision_bound = math.sqrt(6 / (3 * 8 * 8 + 128))  # Xavier over the 8x8 RGB patch embedding
    text_bound = math.sqrt(6 / (128 + 128))
    for prompts, bound in ((drawn[0]["vision"], vision_bound), (drawn[0]["text"], text_bound)):
        assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound  # uniform: fills the range


def test_only_the_prompts_get_gradients():
    backbone = _backbone()
    model = _prompted(backbone).train()
    ids, mask = _captions([6, 12, 40])
    g = torch.Generator().manual_seed(1)
    image, text = model.encode_image(_pixels()), model.encode_text(ids, mask)
    (image * torch.randn(image.shape, generator=g)).sum().add((text * torch.randn(text.shape, generator=g)).sum()).backward()
    for tower, prompts in model.prompts.items():
        assert prompts.grad is not None, tower
        assert (prompts.grad.abs().sum(-1) > 0).all(), f"{tower}: a prompt token without gradient"
    assert all(t.grad is None for t in backbone.parameters())


# ----------------------------------------------------------------------- the walk


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("lengths", [[6, 12, 25], [40, 40, 40]], ids=["padded", "unpadded"])
def test_without_prompts_the_walk_is_the_model_itself(attn, lengths):
    backbone = _backbone(attn)
    model = PromptedClip(backbone, prompts=0, depth="deep")
    ids, mask = _captions(lengths)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(_pixels()), backbone.encode_image(_pixels()))
        torch.testing.assert_close(model.encode_text(ids, mask), backbone.encode_text(ids, mask))
        # every position, padding included: the padding mask is applied where the model applies it
        own = backbone.clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(backbone.clip.text_model.final_layer_norm(model.tokens("text", input_ids=ids, attention_mask=mask)), own)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("depth", ["deep", "shallow"])
@pytest.mark.parametrize("lengths", [[6, 12, 25], [40, 40, 40]], ids=["padded", "unpadded"])
def test_prompted_towers_match_the_library_encoder_with_spliced_prompts(attn, depth, lengths):
    torch.manual_seed(0)
    backbone = _backbone(attn)
    model = _prompted(backbone, depth=depth)
    ids, mask = _captions(lengths)
    with torch.no_grad():
        tokens, embedding = _reference(backbone, model.prompts["vision"], "vision", pixel_values=_pixels())
        torch.testing.assert_close(model.tokens("vision", pixel_values=_pixels()), tokens)
        torch.testing.assert_close(model.encode_image(_pixels()), embedding)
        tokens, embedding = _reference(backbone, model.prompts["text"], "text", input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(model.tokens("text", input_ids=ids, attention_mask=mask), tokens)
        torch.testing.assert_close(model.encode_text(ids, mask), embedding)


@pytest.mark.parametrize("depth", ["deep", "shallow"])
def test_text_prompts_reach_every_token_after_bos_but_not_bos(depth):
    model = _prompted(_backbone(), depth=depth)
    ids, mask = _captions([6, 12, 40])
    with torch.no_grad():
        before = model.tokens("text", input_ids=ids, attention_mask=mask)
        # random, not a constant shift: LayerNorm would erase that before anyone reads the prompts
        model.prompts["text"].add_(0.1 * torch.randn(model.prompts["text"].shape, generator=torch.Generator().manual_seed(2)))
        after = model.tokens("text", input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(after[:, 0], before[:, 0])  # BOS precedes the prompts
    changed = (after - before).abs().amax(-1) > 1e-4
    assert changed[:, 1:].all()  # every later token, EOT and padding included, sees them
    eot = (ids == EOS).int().argmax(-1)
    assert changed[torch.arange(3), eot].all()


def test_padding_ids_do_not_change_the_text_embedding():
    model = _prompted(_backbone())
    ids, mask = _captions([6, 12, 25])
    noisy = torch.where(mask.bool(), ids, torch.randint(FIRST_WORD, 48, ids.shape, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(noisy, ids)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(noisy, mask), model.encode_text(ids, mask))


# ----------------------------------------------------------------------- end to end


@pytest.mark.parametrize("variant", ["prompt", "prompt-shallow"])
def test_short_run_records_only_the_prompts_as_trainable(cli, tmp_path, variant):
    code, _, err = cli("run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(tmp_path), "--methods", variant, *tiny_args())
    assert code == 0, err
    rec = json.loads(records.record_path(tmp_path, variant, 0).read_text())
    assert rec["run"]["status"] == "ok"
    sets = 4 if variant == "prompt" else 1  # the suite freezes head and temperature
    assert rec["cost"]["params_trainable"] == 2 * sets * 8 * 128
