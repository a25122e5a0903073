"""Ladder Side-Tuning: sizes, pruned initialisation, and the no-graph guarantee."""

import json

import pytest
import torch

from petlbench import records
from petlbench.measure.params import parameter_counts
from petlbench.methods import lst
from petlbench.models.loader import load_backbone
from petlbench.registry import SetupData
from petlbench.tasks import get_task
from petlbench.tasks.retrieval.task import contrastive_loss
from petlbench.variants import load_variant
from tests.conftest import tiny_args
from tests.saved import saved_bytes
from tests.test_methods import _block_params


def _backbone():
    model, tok, *_ = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    return model, tok


def _config(*overrides):
    return load_variant("lst", ["method.init=random", *overrides]).config


def _inputs(tok, batch=4):
    gen = torch.Generator().manual_seed(0)
    enc = tok(
        ["a big red circle in the middle and a tiny blue ring at the top"] * batch, padding="max_length", max_length=40, return_tensors="pt"
    )
    return torch.randn(batch, 3, 48, 48, generator=gen), enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("r,drop", [(4, []), (8, [0, 2])])
def test_trainable_count_closed_form(r, drop):
    backbone, _ = _backbone()
    model = lst.LST.apply(backbone, _config(f"method.r={r}", f"method.drop_layers={drop}"), None)
    expected = 0
    for tower_cfg in (backbone.clip.config.vision_config, backbone.clip.config.text_config):
        d, ds, kept = tower_cfg.hidden_size, tower_cfg.hidden_size // r, tower_cfg.num_hidden_layers - len(drop)
        expected += (1 + kept) * (d * ds + ds)  # down_in and one down_i per kept layer
        expected += kept  # gates
        expected += kept * _block_params(ds, tower_cfg.intermediate_size // r)
        expected += 2 * ds + ds * d + d  # final side LayerNorm and up
    assert parameter_counts(model)["params_trainable"] == expected


def test_gates_start_at_one_half():
    backbone, _ = _backbone()
    model = lst.LST.apply(backbone, _config(), None)
    for side in model.side.values():
        torch.testing.assert_close(torch.sigmoid(side.gates / side.temperature), torch.full_like(side.gates, 0.5))


def test_magnitude_init_copies_the_top_rows_of_each_block():
    backbone, _ = _backbone()
    model = lst.LST.apply(backbone, load_variant("lst", ["method.init=magnitude"]).config, None)
    block, side = backbone.blocks()["text"][1], model.side["text"].blocks[1]
    d, ds, heads = 128, 32, 4
    # independent selection with plain sorting
    resid_score = block.self_attn.out_proj.weight.abs().sum(1) + block.self_attn.out_proj.bias.abs()
    resid_score += block.mlp.fc2.weight.abs().sum(1) + block.mlp.fc2.bias.abs()
    resid = sorted(sorted(range(d), key=lambda i: -resid_score[i].item())[:ds])
    qkv = sum(
        getattr(block.self_attn, n).weight.abs().sum(1) + getattr(block.self_attn, n).bias.abs() for n in ("q_proj", "k_proj", "v_proj")
    )
    hd, shd = d // heads, ds // heads
    attn_rows = [h * hd + i for h in range(heads) for i in sorted(sorted(range(hd), key=lambda i: -qkv[h * hd + i].item())[:shd])]
    torch.testing.assert_close(side.self_attn.v_proj.weight, block.self_attn.v_proj.weight[attn_rows][:, resid])
    torch.testing.assert_close(side.self_attn.out_proj.weight, block.self_attn.out_proj.weight[resid][:, attn_rows])
    torch.testing.assert_close(side.layer_norm2.bias, block.layer_norm2.bias[resid])


@pytest.mark.slow
def test_fisher_importance_is_the_sum_of_squared_gradients_per_batch():
    backbone, tok = _backbone()
    pixels, ids, mask = _inputs(tok, batch=4)
    ids[2:, 2] = 7  # two distinct captions so the contrastive loss has a gradient
    batches = [{"pixel_values": pixels[:2] + k, "input_ids": ids[k : k + 2], "attention_mask": mask[k : k + 2]} for k in (0, 2)]
    sizes = []

    def batches_of(size: int):
        sizes.append(size)
        return iter(batches)

    scores = lst.fisher_importance(backbone, SetupData(batches_of, get_task("retrieval").implementation.loss), 2, 2)
    assert sizes == [2]  # one sampler, of the batch size asked for
    weight = backbone.blocks()["vision"][0].mlp.fc1.weight
    expected = torch.zeros_like(weight)
    for batch in batches:  # independent route: .backward() and .grad, one batch at a time
        backbone.zero_grad(set_to_none=True)
        backbone.requires_grad_(True)
        contrastive_loss(
            backbone.encode_image(batch["pixel_values"]),
            backbone.encode_text(batch["input_ids"], batch["attention_mask"]),
            backbone.logit_scale,
        ).backward()
        expected += weight.grad.square()
    torch.testing.assert_close(scores[weight], expected)
    assert expected.abs().sum() > 0


@pytest.mark.slow
def test_saved_for_backward_stays_within_the_ladder_bound():
    backbone, tok = _backbone()
    model = lst.LST.apply(backbone, _config(), None)
    pixels, ids, mask = _inputs(tok)
    encode = {"vision": lambda: model.encode_image(pixels), "text": lambda: model.encode_text(ids, mask)}
    for tower, run in encode.items():
        with torch.no_grad():
            states = backbone.tower_states(
                tower, **({"pixel_values": pixels} if tower == "vision" else {"input_ids": ids, "attention_mask": mask})
            )
        n_states = len(states.hidden_states)
        b, n, d = states.hidden_states[0].shape
        ladder_bound = n_states * b * n * d * 4  # (L+1)·B·N·d fp32 elements: what the downs read
        side_mask = lst._causal_padding_mask(states.token_mask) if tower == "text" else None
        detached = tuple(torch.randn_like(h) for h in states.hidden_states)
        own = saved_bytes(lambda side=model.side[tower]: side(detached, side_mask), model)  # noqa: B023
        own -= n_states * b * n * d * 4  # the random stand-ins for the states, counted above
        head = 2 * b * d * 4  # the frozen final norm's and projection's inputs: B pooled vectors each
        saved = saved_bytes(run, model)
        assert saved <= ladder_bound + own + head, (tower, saved, ladder_bound, own)

        # the same check fails when the backbone body builds a graph: a trainable embedding
        # before the backbone, with the body run under the caller's grad mode
        embeddings = backbone.clip.vision_model.embeddings if tower == "vision" else backbone.clip.text_model.embeddings
        embeddings.requires_grad_(True)
        try:
            leaky = saved_bytes(lambda tower=tower: _head(model, tower, *_body_with_grad(model, tower, pixels, ids, mask)), model)
        finally:
            embeddings.requires_grad_(False)
        assert leaky > ladder_bound + own + head


def _head(model, tower, tokens, pool_index):
    return model.backbone.tower_head(tower, tokens, pool_index=pool_index)


def _body_with_grad(model, tower, pixels, ids, mask):
    """What LST computes when the backbone body is merely frozen, not run under no_grad."""
    inputs = {"pixel_values": pixels} if tower == "vision" else {"input_ids": ids, "attention_mask": mask}
    states = model.backbone.tower_states(tower, **inputs)
    side_mask = lst._causal_padding_mask(states.token_mask) if tower == "text" else None
    return model.side[tower](states.hidden_states, side_mask), states.pool_index


def test_bad_options_are_config_errors(cli, tmp_path):
    """A width that does not divide the model's is found by the plan's dry `prepare`:
    exit 2 naming the file and the override, before anything runs."""
    code, out, err = cli(
        "run",
        "--suite",
        "vl-retrieval",
        "--methods",
        "lst",
        "--output",
        str(tmp_path / "out"),
        *tiny_args("method.r=3", "method.init=random"),
    )
    assert code == 2 and "methods/lst.yaml with --set method.r=3" in err and "r=3 must divide" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("init", ["fisher", "magnitude", "random"])
@pytest.mark.slow
def test_short_end_to_end_run_per_init(cli, tmp_path, init):
    code, _, err = cli(
        "run",
        "--suite",
        "vl-retrieval",
        "--methods",
        "lst",
        "--output",
        str(tmp_path),
        *tiny_args(f"method.init={init}", "method.fisher_samples=16", "method.fisher_batch_size=8"),
    )
    assert code == 0, err
    assert json.loads(records.record_path(tmp_path, "lst", 0).read_text())["run"]["status"] == "ok"
