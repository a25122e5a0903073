"""The VSE family (ResNet image tower + BERT text tower): the backbone's interface, the
methods that declare it (derived from the registry) under the method contract, UniPT's CNN
and token-level variants in closed form, and methods that do not apply to it."""

import itertools
import json

import pytest
import torch

from petlbench import isolation, plan, records, sweep
from petlbench.config import ConfigError, load_suite
from petlbench.measure.params import parameter_counts
from petlbench.methods import registered
from petlbench.methods.unipt import CnnUniPT, TokenUniPT
from petlbench.models.vse import tiny_vse
from petlbench.registry import SetupData
from petlbench.tasks import get_task
from petlbench.tasks.retrieval.task import contrastive_loss
from petlbench.train import RunOutcome, prepare
from petlbench.variants import load_variant
from tests.conftest import TINY

VSE_METHODS = sorted(name for name, spec in registered().items() if "vse" in spec.families)
OTHER_METHODS = sorted(name for name, spec in registered().items() if "vse" not in spec.families)
BATCH, TEXT_LEN = 4, 12


def _batch(image_size: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    mask[1, 7:] = 0
    mask[3, 3:] = 0
    return {
        "pixel_values": torch.randn(BATCH, 3, image_size, image_size, generator=generator),
        "input_ids": torch.randint(0, 100, (BATCH, TEXT_LEN), generator=generator),
        "attention_mask": mask,
    }


def _loss(model, batch):
    return contrastive_loss(
        model.encode_image(batch["pixel_values"]), model.encode_text(batch["input_ids"], batch["attention_mask"]), model.logit_scale
    )


def _apply(method: str, backbone, *overrides: str):
    spec, cfg = registered()[method], load_variant(method, list(overrides)).config
    if spec.needs_data:
        return spec.apply(backbone, cfg, data=SetupData(lambda _batch_size: itertools.repeat(_batch()), _loss))
    return spec.apply(backbone, cfg)


def _cnn_params(channels: list[int], m: int, e: int) -> int:
    """UniPT's CNN variant: 1x1 convs without bias before each BatchNorm (2m each)."""
    *earlier, c5 = channels
    anchor = c5 * m + 2 * m
    stages = sum((c5 * c + c) + (c * m + 2 * m) for c in earlier)  # guide conv (bias) + reduce conv + BN
    confidence, project, output = m + 1, m * m + m + 2 * m, m * e + e
    return anchor + stages + confidence + project + output


def _token_params(layers: int, d: int, m: int, e: int) -> int:
    """UniPT's token-level variant: Linear + LayerNorm per hidden state (L+1 of them)."""
    reduce = (layers + 1) * (d * m + m + 2 * m)
    confidence, project, output = m + 1, m * m + m + 2 * m, m * e + e
    return reduce + confidence + project + output


def _bert_layer_params(d: int, f: int) -> int:
    """One BERT layer of width d and MLP width f: Q, K, V, output (d -> d), two
    LayerNorms, intermediate d -> f and output f -> d, every Linear with bias."""
    return 4 * (d * d + d) + 2 * 2 * d + (d * f + f) + (f * d + d)


def test_the_vse_methods_include_the_issue_s_list():
    assert {"full", "linear", "lora", "lst", "unipt"} <= set(VSE_METHODS)


def test_tiny_vse_interface():
    backbone = tiny_vse(embed_dim=24)
    batch = _batch()
    assert backbone.encode_image(batch["pixel_values"]).shape == (BATCH, 24)
    assert backbone.encode_text(batch["input_ids"], batch["attention_mask"]).shape == (BATCH, 24)
    maps = backbone.tower_states("vision", pixel_values=batch["pixel_values"]).hidden_states
    assert [m.shape[1] for m in maps] == backbone.resnet.config.hidden_sizes
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]  # strides 4, 8, 16, 32 of 64
    states = backbone.tower_states("text", input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert len(states.hidden_states) == backbone.bert.config.num_hidden_layers + 1
    assert set(backbone.blocks()) == {"text"}
    assert not backbone.logit_scale.requires_grad
    # padding does not reach the text embedding (masked mean)
    changed = batch["input_ids"].clone()
    changed[1, 7:] = 5
    emb = backbone.eval().encode_text(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(emb, backbone.encode_text(changed, batch["attention_mask"]), atol=1e-6)


@pytest.mark.parametrize("downsample", [1, 2])
def test_unipt_trainable_counts_in_closed_form(downsample):
    backbone = tiny_vse()
    model = _apply("unipt", backbone, f"method.downsample={downsample}")
    e = backbone.embed_dim
    m = e // downsample
    channels, text = backbone.resnet.config.hidden_sizes, backbone.bert.config
    image_count = _cnn_params(channels, m, e)
    text_count = _token_params(text.num_hidden_layers, text.hidden_size, m, e)
    assert sum(p.numel() for p in model.image.parameters()) == image_count
    assert sum(p.numel() for p in model.text.parameters()) == text_count
    assert parameter_counts(model)["params_trainable"] == image_count + text_count
    assert not any(p.requires_grad for p in backbone.parameters())


def test_unipt_vse_at_the_authors_size():
    """ResNet-50-sized stages, BERT-base, joint width 1024, m = 512: docs/methods.md quotes
    about 12.4M trainable parameters for the authors' BERT-base + ResNeXt setting."""
    channels = [256, 512, 1024, 2048]
    image, text = CnnUniPT(channels, 512, 1024), TokenUniPT(13, 768, 512, 1024)
    image_count, text_count = (sum(p.numel() for p in part.parameters()) for part in (image, text))
    assert image_count == _cnn_params(channels, 512, 1024)
    assert text_count == _token_params(12, 768, 512, 1024)
    assert abs(image_count + text_count - 12.4e6) / 12.4e6 < 0.01


def test_linear_and_lora_counts_in_closed_form():
    backbone = tiny_vse()
    c5, d, e = backbone.resnet.config.hidden_sizes[-1], backbone.bert.config.hidden_size, backbone.embed_dim
    assert parameter_counts(_apply("linear", backbone))["params_trainable"] == (c5 * e + e) + (d * e + e)
    backbone = tiny_vse()
    cfg = load_variant("lora").config
    layers = backbone.bert.config.num_hidden_layers
    # q_proj/v_proj name BERT's query/value linears (d -> d): A is r x d, B is d x r
    assert parameter_counts(_apply("lora", backbone))["params_trainable"] == layers * len(cfg.targets) * 2 * cfg.r * d


@pytest.mark.parametrize("init", ["fisher", "magnitude", "random"])
def test_lst_text_tower_count_in_closed_form(init):
    backbone = tiny_vse()
    cfg = load_variant("lst", [f"method.init={init}"]).config
    model = _apply("lst", backbone, f"method.init={init}")
    text = backbone.bert.config
    d, f, layers, r = text.hidden_size, text.intermediate_size, text.num_hidden_layers, cfg.r
    s = d // r
    kept = layers - len(cfg.drop_layers)
    expected = (d * s + s) * (1 + kept) + kept + kept * _bert_layer_params(s, f // r) + 2 * s + (s * d + d)
    assert parameter_counts(model)["params_trainable"] == expected
    assert set(model.side) == {"text"}  # no side network on the CNN
    if init != "random":  # pruned: the side weights are backbone weights
        side_query = model.side["text"].blocks[0].attention.self.query.weight
        assert torch.isin(side_query, backbone.bert.encoder.layer[0].attention.self.query.weight).all()


@pytest.mark.parametrize("method", ["unipt", "lst"])
def test_padding_does_not_reach_side_methods(method):
    """The token-level side networks mask padded keys and pool real tokens only."""
    model = _apply(method, tiny_vse()).eval()
    batch = _batch()
    changed = batch["input_ids"].clone()
    changed[1, 7:] = 5
    changed[3, 3:] = 9
    emb = model.encode_text(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(emb, model.encode_text(changed, batch["attention_mask"]), atol=1e-5)


@pytest.mark.parametrize("method", ["unipt", "lst"])
def test_side_methods_keep_the_backbone_body_out_of_the_graph(method):
    """No weight of the ResNet or BERT body is saved for backward, even with a trainable
    module in front of the body (a trainable word embedding): the body runs under an
    explicit no_grad, not merely with requires_grad off."""
    backbone = tiny_vse()
    model = _apply(method, backbone)
    backbone.bert.embeddings.word_embeddings.requires_grad_(True)
    body = {p.data_ptr() for part in (backbone.resnet, backbone.bert) for p in part.parameters()}
    saved = []

    def pack(tensor):
        saved.append(tensor.data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(model, _batch())
    assert saved and not body & set(saved)
    loss.backward()
    assert backbone.bert.embeddings.word_embeddings.weight.grad is None


@pytest.mark.parametrize("size", [48, 80])
def test_unipt_cnn_rejects_input_sizes_that_do_not_divide(size):
    model = _apply("unipt", tiny_vse())
    with pytest.raises(ConfigError, match=rf"{size}x{size} input.*multiples of 32"):
        model.encode_image(_batch(size)["pixel_values"])


def test_unipt_cnn_reads_sizes_from_the_maps():
    model = _apply("unipt", tiny_vse())
    assert model.encode_image(_batch(96)["pixel_values"]).shape == (BATCH, 32)  # 24/12/6/3: k = 8, 4, 2


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_unsupported_method_alone_is_a_config_error(method):
    with pytest.raises(ConfigError, match=rf"{method}.*does not apply to a 'vse' backbone"):
        _apply(method, tiny_vse())


def test_unsupported_method_in_a_sweep_is_a_record(tmp_path, monkeypatch):
    """`run_plan` with `run` replaced by one that prepares the tiny VSE model: the
    unsupported method becomes a record with that status and its reason; the sweep goes on."""
    assert OTHER_METHODS, "every method applies to vse: nothing to check"
    unsupported = OTHER_METHODS[0]
    suite = load_suite("vl-retrieval", TINY)

    def fake_run(suite, variant, seed, device, on_step=None, settings=None):
        model = prepare(tiny_vse(), suite.train, variant)
        memory = {"source": "cpu-accounting", "train_peak_bytes": 1, "eval_peak_bytes": 1, "train_reserved_peak_bytes": None}
        memory.update(eval_reserved_peak_bytes=None, train_breakdown={}, measured_steps=[1, 1])
        cost = {**parameter_counts(model), "memory": memory}
        values = dict.fromkeys((m.name for m in get_task("retrieval").metrics), 0.0)
        metrics = {"task": "retrieval", "primary": "rsum", "values": values, "evaluated": {"images": 1, "captions": 5}}
        return RunOutcome(metrics=metrics, cost=cost)

    monkeypatch.setattr(isolation, "run", fake_run)
    grid = plan.Plan(suite, [load_variant(unsupported), load_variant("linear")], [0], [], tmp_path)
    out = sweep.run_plan(grid, torch.device("cpu"))
    assert [r["run"]["status"] for r in out] == ["unsupported", "ok"]
    rec = json.loads(records.record_path(tmp_path, unsupported, 0).read_text())
    assert rec["run"]["status"] == "unsupported"
    assert "does not apply to a 'vse' backbone" in rec["run"]["error"]
