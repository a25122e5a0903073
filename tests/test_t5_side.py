"""The side methods' encoder-decoder forms on the shipped T5: LST's pruned initialisation
against an independent reading of the LST code's chain, SHERL's multi-tap module against
its formula, and their settings' errors. (Trainable counts at t5-base, the estimate and
the method contract: tests/test_t5.py and tests/test_method_contract.py.)"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from petlbench import estimate, records
from petlbench.config import ConfigError, load_suite
from petlbench.methods import get_method, lst
from petlbench.methods.sherl import MultiTapAggregate
from petlbench.models.loader import load_backbone, load_preprocessors
from petlbench.registry import SetupData
from petlbench.tasks.glue.task import TASK
from petlbench.variants import data_free, load_variant

EMBEDDED = load_suite("glue-embedded")
SMALL_TEXT_RUN = [
    "data.train_examples=64",
    "data.val_examples=8",
    "data.test_examples=8",
    "train.batch_size=8",
    "train.steps=4",
    "train.warmup_steps=1",
    "train.measure_steps=1",
    "eval.batch_size=16",
]


def _examples(n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` training examples of the embedded suite, one per batch."""
    tokenizer, _ = load_preprocessors("embedded-t5")
    small = dataclasses.replace(EMBEDDED, data=dataclasses.replace(EMBEDDED.data, train_examples=n, val_examples=1, test_examples=1))
    split = TASK.splits(small, tokenizer, None, False)["train"]
    return list(itertools.islice(split.training_batches(1, torch.Generator().manual_seed(0)), n))


def _reference_chain(state: dict[str, torch.Tensor], importance: dict[str, torch.Tensor], r: int, depth: int) -> dict[str, torch.Tensor]:
    """The LST code's "fisher-v2" pruning read from its description, by state-dict names and
    plain sorting, in its order of kept rows: the embedding's columns ranked first; then, in order, every norm takes the
    current selection, every group of linears has its columns cut to it and its rows ranked
    by the summed product of the group's importances."""

    def top(scores: torch.Tensor, k: int) -> list[int]:
        """The LST code's `select_weights`: the lowest n - k go, the rest are kept in the order of
        `list(set(range(n)) - set(removed))` (not ascending)."""
        removed = sorted(range(len(scores)), key=lambda i: scores[i].item())[: len(scores) - k]
        return list(set(range(len(scores))) - set(removed))

    order: list[str | list[str]] = ["shared.weight"]
    for tower, sublayers in (("encoder", ("SelfAttention",)), ("decoder", ("SelfAttention", "EncDecAttention"))):
        for i in range(depth):
            at = f"{tower}.block.{i}.layer"
            for j, attention in enumerate(sublayers):
                order += [
                    f"{at}.{j}.layer_norm.weight",
                    [f"{at}.{j}.{attention}.{p}.weight" for p in "qkv"],
                    [f"{at}.{j}.{attention}.o.weight"],
                ]
            ff = len(sublayers)
            order += [f"{at}.{ff}.layer_norm.weight", [f"{at}.{ff}.DenseReluDense.wi.weight"], [f"{at}.{ff}.DenseReluDense.wo.weight"]]
        order.append(f"{tower}.final_layer_norm.weight")
    pruned, keep = {}, None
    for item in order:
        if item == "shared.weight":
            keep = top(importance[item].sum(dim=0), state[item].shape[1] // r)
        elif isinstance(item, str):
            pruned[item] = state[item][keep]
        else:
            columns = keep
            product = torch.ones_like(importance[item[0]][:, columns])
            for name in item:
                product = product * importance[name][:, columns]
            keep = top(product.sum(dim=1), state[item[0]].shape[0] // r)
            for name in item:
                pruned[name] = state[name][keep][:, columns]
    return pruned


@pytest.mark.slow
def test_fisher_pruned_side_blocks_hold_the_rows_the_ranking_selects():
    """Importance computed independently (the library's own loss with labels, `.backward()`
    per example, squared gradients summed); a block dropped from the ladders still passes
    its selection on; the side's position tables are the stacks' first blocks' whole."""
    examples = _examples(3)
    backbone, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    t5 = backbone.t5
    importance = {name: torch.zeros_like(p) for name, p in t5.named_parameters()}
    t5.requires_grad_(True)
    for example in examples:
        t5.zero_grad(set_to_none=True)
        t5(input_ids=example["input_ids"], attention_mask=example["attention_mask"], labels=example["labels"]).loss.backward()
        for name, p in t5.named_parameters():
            importance[name] += p.grad.square()
    state = {name: p.detach().clone() for name, p in t5.named_parameters()}
    cfg = load_variant("lst-r8", ["method.r=4", "method.drop_layers=[1]", "method.fisher_samples=3"]).config
    model = lst.LST.apply(backbone, cfg, SetupData(lambda batch_size: iter(examples), TASK.loss))
    pruned = _reference_chain(state, importance, 4, 3)
    for tower in ("encoder", "decoder"):
        side = model.side[tower]
        assert side.keep == [0, 2]
        for j, layer in enumerate(side.keep):
            for name, p in side.blocks[j].named_parameters():
                if "relative_attention_bias" in name:
                    torch.testing.assert_close(p, state[f"{tower}.block.0.{name}"], rtol=0, atol=0)
                else:
                    torch.testing.assert_close(p, pruned[f"{tower}.block.{layer}.{name}"], rtol=0, atol=0)
        torch.testing.assert_close(side.norm.weight, pruned[f"{tower}.final_layer_norm.weight"], rtol=0, atol=0)
    assert sum(p.abs().sum() for p in importance.values()) > 0


def test_magnitude_and_random_initialisations():
    """Magnitude ranks by the weights alone (no data read); random copies nothing of the backbone."""
    backbone, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    state = {name: p.detach().clone() for name, p in backbone.t5.named_parameters()}
    model = lst.LST.apply(backbone, load_variant("lst-r8-magnitude", ["method.r=4"]).config, None)
    pruned = _reference_chain(state, {name: w.abs() for name, w in state.items()}, 4, 3)
    block = model.side["decoder"].blocks[1]
    torch.testing.assert_close(block.layer[1].EncDecAttention.k.weight, pruned["decoder.block.1.layer.1.EncDecAttention.k.weight"])
    backbone, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    torch.manual_seed(0)
    model = lst.LST.apply(backbone, load_variant("lst-r8-random", ["method.r=4"]).config, None)
    own = model.side["encoder"].blocks[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert not torch.equal(own, backbone.blocks()["encoder"][0].layer[0].SelfAttention.relative_attention_bias.weight)


def test_sherl_multi_tap_module_is_the_authors_formula():
    """Per token: each tap through its adapter (fc2(u) + u) * sigmoid(fc3(u)), u = ReLU(fc1(x));
    the shallow ones S_j weighed against the deepest D by ReLU(score(S_j * D)) over their
    redundancy sum_l ReLU(cos(S_j, S_l)), L1-normalised; Linear(ReLU(sum_j w_j S_j + D)) plus
    tanh(gamma / 0.1) of the deepest tap (written here token by token, from the formula)."""
    torch.manual_seed(0)
    module = MultiTapAggregate(4, 8, 6)
    with torch.no_grad():
        module.gamma.fill_(0.03)
    taps = [torch.randn(2, 3, 8) for _ in range(4)]
    out = module(taps, torch.ones(2, 3, dtype=torch.bool))
    eps = 1e-6
    for b, n in itertools.product(range(2), range(3)):
        adapted = []
        for adapter, tap in zip(module.adapters, taps, strict=True):
            u = torch.relu(adapter.fc1(tap[b, n]))
            adapted.append((adapter.fc2(u) + u) * torch.sigmoid(adapter.fc3(u)))
        *shallow, deep = adapted
        unit = [s / (s.norm() + eps) for s in shallow]
        rho = [sum(torch.relu(u @ v) for v in unit) for u in unit]
        raw = [torch.relu(module.aggregate.score(s * deep)).squeeze() / r for s, r in zip(shallow, rho, strict=True)]
        total = sum(w.abs() for w in raw) + eps
        mixed = sum((w / total) * s for w, s in zip(raw, shallow, strict=True)) + deep
        expected = module.out(torch.relu(mixed)) + torch.tanh(torch.tensor(0.03 / 0.1)) * taps[-1][b, n]
        torch.testing.assert_close(out[b, n], expected)


@pytest.mark.parametrize(
    "variant, override, message",
    [
        ("lst-r8", "method.drop_layers=[3]", r"lst: drop_layers=\[3\] must index the stacks' blocks \(0..2\)"),
        ("lst-r8", "method.r=3", "lst: r=3 must divide the encoder's width 64"),
        ("lst-r8", "method.drop_layers=[0,1,2]", r"lst: drop_layers=\[0, 1, 2\] drops every block of the stacks \(0..2\)"),
        ("sherl-r4", "method.drop_layers=[1]", "block 1 must stay tapped"),
        ("unipt-r4", "method.downsample=3", "unipt: downsample=3 must be a positive divisor of the model width 64"),
    ],
)
def test_settings_that_do_not_fit_the_model_are_config_errors(variant, override, message):
    backbone, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    chosen = data_free(load_variant(variant, [override]))
    with pytest.raises(ConfigError, match=message):
        get_method(chosen.method).apply(backbone, chosen.config)


def test_tapped_blocks_are_an_encoder_decoder_setting(cli, tmp_path):
    """The dual-encoder forms tap every layer: drop_layers there is a refused configuration."""
    code, out, _ = cli(
        "run", "--suite", "vl-retrieval", "--variants", "sherl,sherl-glue,unipt-glue", "--dry-run", "--output", str(tmp_path)
    )
    assert code == 0 and "sherl seed 0: would run" in out
    assert "sherl-glue seed 0: unsupported (sherl: drop_layers [0, 4, 8] applies to the encoder-decoder form" in out
    assert "unipt-glue seed 0: unsupported (unipt: drop_layers [0, 4, 8] applies to the encoder-decoder form" in out


@pytest.mark.slow
def test_each_initialisation_runs_end_to_end_and_is_recorded_as_such(cli, tmp_path):
    code, _, err = cli(
        "run",
        "--suite",
        "glue-embedded",
        "--variants",
        "lst-r8,lst-r8-magnitude,lst-r8-random",
        "--output",
        str(tmp_path),
        "--jobs",
        "1",
        *(f"--set={item}" for item in SMALL_TEXT_RUN),
        "--set=method.fisher_samples=4",
    )
    assert code == 0, err
    for variant, init in (("lst-r8", "fisher"), ("lst-r8-magnitude", "magnitude"), ("lst-r8-random", "random")):
        record = json.loads(records.record_path(tmp_path, variant, 0).read_text())
        assert record["run"]["status"] == "ok" and record["config"]["method"]["init"] == init


def test_an_estimate_leaves_out_a_variant_whose_settings_do_not_fit_the_model():
    """A 12-block configuration on the 3-block embedded T5: named beside the others, not an
    abort of the whole estimate; alone, an error saying why."""
    job = estimate.make_job("embedded-t5", None, ["lora", "lst-glue"], 26)
    rows = estimate.at_batch(job, 2)
    assert [row.variant.name for row in rows] == ["lora"]
    assert job.misfits == {"lst-glue": "lst: drop_layers=[0, 4, 8] must index the stacks' blocks (0..2)"}
    with pytest.raises(ConfigError, match=r"no variant fits the model: lst: drop_layers=\[0, 4, 8\]"):
        estimate.at_batch(estimate.make_job("embedded-t5", None, ["lst-glue"], 26), 2)
