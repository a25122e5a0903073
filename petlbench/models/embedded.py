"""The embedded model's tokenizer and architecture, built from code (no download).

`scripts/pretrain_embedded.py` uses these to make the checkpoint shipped in
`petlbench/assets/embedded-clip`; at run time the checkpoint is loaded with the same
`from_pretrained` path as a real one.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, PreTrainedTokenizerFast

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
