"""The T5 family: what its interface exposes, the trainable counts the LST code's T5
configurations imply (the formulas below, from the T5-base shapes), and the estimate equal
to the real CPU accounting for every T5 method variant, training and generation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from petlbench import estimate
from petlbench.config import ESTIMATE_TARGET_LENGTH, ConfigError, load_suite
from petlbench.estimate import FakeTraining
from petlbench.measure.memory import CpuAccountingMeter, host_batches, training_state
from petlbench.measure.params import parameter_counts
from petlbench.models.loader import load_architecture, load_backbone
from petlbench.tasks.glue.task import TASK
from petlbench.train import Training, prepare
from petlbench.variants import data_free, load_variant

GLUE = load_suite("glue")
EMBEDDED = load_suite("glue-embedded")
T5_VARIANTS = EMBEDDED.variants

# T5-base: d 768, d_ff 3072, 12 + 12 blocks, vocabulary 32,128, 32 buckets x 12 heads.
D, FF, L, V, BUCKETS, HEADS = 768, 3072, 12, 32128, 32, 12
NORMS = L * 2 + 1 + L * 3 + 1  # every T5LayerNorm: two per encoder block, three per decoder block, two final
BIASES = L * (4 * D + FF + D + 2 * D) + L * (8 * D + FF + D + 3 * D) + 2 * D + V  # q,k,v,o (x2 in the decoder), wi, wo, norms; lm_head
LORA_QV = 72 * 32 * (D + D)  # q and v of 36 attentions (12 encoder self, 12 decoder self, 12 cross), r = 32
EXPECTED = {
    "full": V * D + L * (4 * D * D + 2 * D * FF + 2 * D) + L * (8 * D * D + 2 * D * FF + 3 * D) + 2 * BUCKETS * HEADS + 2 * D,
    "adapter-lst": 4 * L * (2 * D * (D // 16) + D // 16 + D) + NORMS * D,  # 48 adapters of width 48, and every norm
    "lora-r32": LORA_QV,
    "lora-r32-bias": LORA_QV + BIASES + 2 * BUCKETS * HEADS,  # and the two relative position tables, named "*bias*"
    "lora-fa-r32": LORA_QV // 2,  # B only
    "bitfit": BIASES,
    "prompt-100": 100 * D,
}


def lst_trainable(d: int, ff: int, inner: int, heads: int, depth: int, kept: int, r: int = 8) -> int:
    """LST's T5 form from its modules: side blocks of width s = d/r, feed-forward ff/r and
    attention width inner/r (heads x d_kv/r); per stack Down_in and a Down per kept block
    (with biases), one gate per backbone block, the first side block's position table (32
    buckets per head), the side's final norm; Up into the head."""
    s, s_ff, s_in = d // r, ff // r, inner // r
    encoder_block, decoder_block = 4 * s * s_in + 2 * s * s_ff + 2 * s, 8 * s * s_in + 2 * s * s_ff + 3 * s
    ladders = (1 + kept) * (d * s + s) + depth + BUCKETS * heads + s
    return kept * encoder_block + ladders + kept * decoder_block + ladders + s * d + d


EXPECTED["lst-glue"] = lst_trainable(D, FF, D, HEADS, L, kept=9)  # side width 96 at nine of the twelve blocks
# SHERL (sherl-glue), m = d/4: per tap an adapter d·m + m + 2(m² + m); per stack the anti-redundancy
# score (m + 1), the gate, the output Linear (m·d + d) and the new norm; 10 encoder and 9 decoder taps.
M = D // 4
EXPECTED["sherl-glue"] = sum(taps * (D * M + M + 2 * (M * M + M)) + (M + 1) + 1 + (M * D + D) + D for taps in (10, 9))
# UniPT (unipt-glue), m = d/4: per tap Linear and LayerNorm; the confidence score, Proj (Linear and
# LayerNorm), the output Linear back to d and the new norm.
EXPECTED["unipt-glue"] = sum(taps * (D * M + M + 2 * M) + (M + 1) + (M * M + 3 * M) + (M * D + D) + D for taps in (10, 9))


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_trainable_counts_at_t5_base_are_the_lst_configurations(variant):
    """The shared spec's figures: adapters 3,625,728; LoRA with biases 3,822,208; BitFit
    282,496; prompt 76,800; full 222,903,552; LST 3,878,712; SHERL 4,511,812 (here from the
    formulas, not the code)."""
    architecture = load_architecture("t5-base")
    with torch.device("meta"):
        backbone = architecture.build("eager")
    model = prepare(backbone, GLUE.train, data_free(load_variant(variant)), task="glue")
    assert parameter_counts(model)["params_trainable"] == EXPECTED[variant]
    assert (EXPECTED["adapter-lst"], EXPECTED["lora-r32-bias"], EXPECTED["bitfit"], EXPECTED["full"]) == (
        3_625_728,
        3_822_208,
        282_496,
        222_903_552,
    )
    assert (EXPECTED["lst-glue"], EXPECTED["sherl-glue"]) == (3_878_712, 4_511_812)


@pytest.mark.parametrize(
    "model, variant, sizes",
    [
        ("t5-large", "lst-glue-large", (1024, 4096, 1024, 16, 24, 12)),
        ("t5-3b", "lst-glue-3b", (1024, 16384, 4096, 32, 24, 1)),  # 32 heads of 128: attention 4x wider than the model
    ],
)
def test_lst_trainable_counts_at_the_larger_sizes_of_the_lst_code(model, variant, sizes):
    with torch.device("meta"):
        backbone = load_architecture(model).build("eager")
    trained = prepare(backbone, GLUE.train, data_free(load_variant(variant)), task="glue")
    assert parameter_counts(trained)["params_trainable"] == lst_trainable(*sizes)


def test_added_biases_change_nothing_until_they_train():
    """BitFit's zero biases (T5 has none): the same logits, bit for bit."""
    backbone, tokenizer, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    backbone.eval()
    ids = tokenizer(["consistency sentence: a big red circle at the top is left of a small cube"], return_tensors="pt")
    decoder = torch.tensor([[0, 5, 7]])
    before = backbone.decode(decoder, backbone.encode(ids["input_ids"], ids["attention_mask"]))
    added = backbone.add_biases()
    after = backbone.decode(decoder, backbone.encode(ids["input_ids"], ids["attention_mask"]))
    assert sum(p.numel() for p in added) > 0 and all(not p.any() for p in added)
    assert torch.equal(before, after)


def test_encode_and_decode_are_the_library_forward():
    backbone, tokenizer, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    backbone.eval()
    ids = tokenizer(["overlap sentence1: a big red circle sentence2: a tiny blue ring"], return_tensors="pt")
    decoder = torch.tensor([[0, 9, 11, 13]])
    ours = backbone.decode(decoder, backbone.encode(ids["input_ids"], ids["attention_mask"]))
    library = backbone.t5(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], decoder_input_ids=decoder).logits
    torch.testing.assert_close(ours, library, rtol=0, atol=0)


def test_tower_states_are_the_embeddings_and_every_block_output_before_the_final_norm():
    """Checked against the library's modules run one by one: the first state is the token
    embeddings, the last one normed by the stack's final norm is what the encoder returns
    (the library's own `output_hidden_states` ends with the normed output in 5.24)."""
    backbone, tokenizer, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    backbone.eval()
    ids = tokenizer(["paraphrase sentence1: a big red circle sentence2: a tiny blue ring"], return_tensors="pt")
    states = backbone.tower_states("encoder", input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).hidden_states
    encoded = backbone.encode(ids["input_ids"], ids["attention_mask"])
    assert len(states) == backbone.tower_shape("encoder").depth + 1
    torch.testing.assert_close(states[0], backbone.embed(ids["input_ids"]), rtol=0, atol=0)
    torch.testing.assert_close(backbone.final_norms()[0](states[-1]), encoded.states, rtol=0, atol=0)
    assert not torch.equal(states[-1], encoded.states)
    decoder = backbone.tower_states("decoder", decoder_input_ids=torch.tensor([[0, 5]]), states=encoded.states, mask=encoded.mask)
    assert len(decoder.hidden_states) == backbone.tower_shape("decoder").depth + 1


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_walk_through_the_blocks_is_the_library_forward(attention):
    """Side networks walk the stacks block by block (`EncoderDecoder.walk`): every block, then
    `finish`, then `head_logits`, gives the library's logits bit for bit, with padding in
    the batch (the masks) and past the first decoder block (the position biases it passes on)."""
    backbone, tokenizer, *_ = load_backbone("embedded-t5", attention, torch.device("cpu"))
    backbone.eval()
    ids = tokenizer(
        ["overlap sentence1: a big red circle sentence2: a tiny blue ring", "consistency sentence: a cube"],
        padding=True,
        return_tensors="pt",
    )
    assert not ids["attention_mask"].all()
    decoder = torch.tensor([[0, 9, 11, 13], [0, 4, 4, 2]])
    library = backbone.t5(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], decoder_input_ids=decoder).logits

    def walked(tower, **inputs):
        walk = backbone.walk(tower, **inputs)
        tokens = walk.tokens
        for block in backbone.blocks()[tower]:
            tokens = walk(block, tokens)
        return tokens

    states = backbone.finish("encoder", walked("encoder", **ids))
    torch.testing.assert_close(states, backbone.encode(ids["input_ids"], ids["attention_mask"]).states, rtol=0, atol=0)
    logits = backbone.head_logits(
        backbone.finish("decoder", walked("decoder", decoder_input_ids=decoder, states=states, mask=ids["attention_mask"]))
    )
    torch.testing.assert_close(logits, library, rtol=0, atol=0)


def test_a_fresh_walk_runs_narrow_blocks_of_the_stack_kind():
    """A side stack of blocks `new_block` made (widths / 4, its first with the position
    table) walks with the masks of the backbone's pass; a padded position changes nothing
    that a real one reads (the mask holds), and the side decoder attends to narrow states."""
    backbone, tokenizer, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    backbone.eval()
    torch.manual_seed(0)
    encoder_side = [backbone.new_block("encoder", 4, positions=i == 0).eval() for i in range(2)]
    decoder_side = [backbone.new_block("decoder", 4, positions=i == 0).eval() for i in range(2)]
    assert [b.layer[0].SelfAttention.has_relative_attention_bias for b in encoder_side] == [True, False]
    ids = tokenizer(["consistency sentence: a big red circle", "consistency sentence: a cube"], padding=True, return_tensors="pt")
    real = ids["attention_mask"].bool()
    narrow = torch.randn(2, ids["input_ids"].shape[1], 16)

    def side(tokens):
        walk = backbone.walk("encoder", **ids).fresh()
        for block in encoder_side:
            tokens = walk(block, tokens)
        return tokens

    first = side(narrow)
    changed = narrow.clone()
    changed[~real] = 5.0
    second = side(changed)
    assert first.shape == narrow.shape
    torch.testing.assert_close(first[real], second[real], rtol=0, atol=0)
    walk = backbone.walk(
        "decoder", decoder_input_ids=torch.tensor([[0, 3], [0, 4]]), states=torch.randn(2, narrow.shape[1], 64), mask=ids["attention_mask"]
    ).fresh()
    out = torch.randn(2, 2, 16)
    for block in decoder_side:
        out = walk(block, out, cross=first)
    assert out.shape == (2, 2, 16)


@pytest.mark.parametrize("variant", T5_VARIANTS)
def test_no_decoder_position_reads_a_later_one(variant):
    """Teacher forcing shows the decoder every target token at once: a method whose decoder
    side mixes positions (a side network's attention, UniPT's token-to-token interaction and
    its layer confidence) must keep each position to its prefix, or training reads the answer
    it is asked for. The trainable parameters are moved off their initial values first, so
    that no zero-initialised gate hides a path."""
    backbone, tokenizer, *_ = load_backbone("embedded-t5", "sdpa", torch.device("cpu"))
    torch.manual_seed(0)
    model = prepare(backbone, EMBEDDED.train, data_free(load_variant(variant)), task="glue").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        ids = tokenizer(["overlap sentence1: a big red circle sentence2: a tiny blue ring"], return_tensors="pt")
        encoded = model.encode(ids["input_ids"], ids["attention_mask"])
        first = model.decode(torch.tensor([[0, 9, 11, 13]]), encoded)
        second = model.decode(torch.tensor([[0, 9, 4, 7]]), encoded)
    torch.testing.assert_close(first[:, :2], second[:, :2], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(first[:, 2:], second[:, 2:])


# The suite's training options, each of which the estimate must model to the byte.
TRAIN_OPTIONS = {"fp32": {}, "bf16": {"precision": "bf16"}, "checkpointing": {"grad_checkpointing": True}}
BATCH = 4


def _real(suite, variant):
    torch.manual_seed(0)
    architecture = load_architecture(suite.model.name)
    training = Training.of(architecture.build(suite.model.attn_implementation), suite.train, data_free(load_variant(variant)), task="glue")
    batches = iter(lambda: TASK.random_batch(architecture, BATCH, suite), None)
    return training.measure(batches, torch.device("cpu"), CpuAccountingMeter()).peak, training.model, architecture


@pytest.mark.parametrize("options", TRAIN_OPTIONS)
@pytest.mark.parametrize("variant", T5_VARIANTS)
@pytest.mark.slow
def test_fake_estimate_equals_real_cpu_accounting_on_t5(variant, options):
    suite = dataclasses.replace(EMBEDDED, train=dataclasses.replace(EMBEDDED.train, **TRAIN_OPTIONS[options]))
    real, _, architecture = _real(suite, variant)
    estimate = FakeTraining(architecture, suite, load_variant(variant), target="cpu").peak(BATCH)
    assert real.breakdown["transient_peak"] > 0
    assert estimate.breakdown == real.breakdown and estimate.peak_bytes == real.peak_bytes


@pytest.mark.parametrize("variant", T5_VARIANTS)
@pytest.mark.slow
def test_fake_generation_peak_equals_real_cpu_accounting_on_t5(variant):
    """The evaluation phase (greedy generation) as `train.run` measures it, on real token ids."""
    real_train, model, architecture = _real(EMBEDDED, variant)
    split = TASK.random_split(architecture, 10, EMBEDDED)
    with CpuAccountingMeter().phase(*training_state(model)) as real:
        TASK.evaluate(model, split, 4, torch.device("cpu"), 1, "fp32", host_batches)
    training = FakeTraining(architecture, EMBEDDED, load_variant(variant), target="cpu")
    training.peak(BATCH)
    estimate = training.eval_peak(4, 10)
    assert real.breakdown["transient_peak"] > 0
    assert estimate.breakdown == real.breakdown and estimate.peak_bytes == real.peak_bytes


def test_an_estimate_on_t5_takes_the_glue_rules_and_leaves_out_what_does_not_apply():
    """Without --suite, a T5 is estimated under the `glue` suite's rules; variants whose
    method has no T5 form, or whose configuration T5 refuses (deep prompts), are left out
    and named; the target length an estimate takes is concrete."""
    job = estimate.make_job("t5-base", None, None, 128)
    assert job.suite.task == "glue" and job.suite.data.text_length == 128 and job.suite.data.target_length == ESTIMATE_TARGET_LENGTH
    assert {"linear", "dtl", "dtl-plus", "res-tuning-bypass", "prompt"} == set(job.unsupported)
    assert {v.name for v in job.variants} >= set(EXPECTED) | {"partial", "prompt-shallow"}
    assert estimate.make_job("t5-base", None, ["lora"], 128, target_length=6).suite.data.target_length == 6
    with pytest.raises(ConfigError, match="--target-len 6: the suite 'vl-retrieval' has no target text"):
        estimate.make_job("clip-vit-base-patch32", None, ["lora"], None, target_length=6)
