"""The embedded models' tokenizers and architectures, built from code (no download).

`scripts/pretrain_embedded.py` uses these to make the checkpoint shipped in
`petlbench/assets/embedded-clip`; at run time the checkpoint is loaded with the same
`from_pretrained` path as a real one.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, PreTrainedTokenizerFast, T5Config

from petlbench.data import scenes

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
# Ids 0..3 in that order. The EOT id is deliberately not 2: transformers treats
# eos_token_id == 2 as a legacy CLIP config and pools at argmax(ids) instead.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
TEXT_LENGTH = 40


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the generator's vocabulary: `<bos> words <eos>`."""
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *scenes.vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=TEXT_LENGTH,
    )


def build_config(vocab_size: int) -> CLIPConfig:
    """A 128-wide CLIP, 4+4 layers, patch 8 on 48x48 images, projection 64 (~1.6M params)."""
    width, layers, heads = 128, 4, 4
    common = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    return CLIPConfig(
        text_config=dict(
            common,
            vocab_size=vocab_size,
            max_position_embeddings=TEXT_LENGTH,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        ),
        vision_config=dict(common, image_size=scenes.IMAGE_SIZE, patch_size=8, num_channels=3),
        projection_dim=64,
    )


# -- the embedded T5 (petlbench/assets/embedded-t5, scripts/pretrain_embedded_t5.py) -----------

# T5's special ids: padding (also the decoder's start), end, unknown; then the sentinels of
# span corruption, as T5's own tokenizer names them.
T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
T5_SENTINELS = tuple(f"<extra_id_{i}>" for i in range(16))
# What the text tasks' sources and targets add to the scene vocabulary: field keys, the
# embedded tasks' names (petlbench/tasks/glue/definitions.py), digits and the decimal point.
T5_EXTRA_WORDS = ("sentence", ":", "consistency", "paraphrase", "overlap", ".", *"0123456789")
T5_SOURCE_LENGTH = 64


def build_t5_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the scene vocabulary and the text tasks' words: `words </s>`;
    punctuation and every digit are tokens of their own ("sentence1:" is three tokens)."""
    words = [*T5_SPECIAL_TOKENS, *sorted(set(scenes.vocabulary()) | set(T5_EXTRA_WORDS)), *T5_SENTINELS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=list(T5_SENTINELS),
        model_max_length=T5_SOURCE_LENGTH,
    )


def build_t5_config(vocab_size: int) -> T5Config:
    """A 64-wide T5, 3+3 blocks of 4 heads (d_kv 16), ReLU feed-forward of 256 (350K parameters with the 79-word vocabulary)."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=64,
        d_kv=16,
        d_ff=256,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        n_positions=T5_SOURCE_LENGTH,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=True,
    )
