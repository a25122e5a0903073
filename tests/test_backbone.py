"""The tower interface side methods rely on reproduces the model's own outputs."""

import torch

from petlbench.models.clip import eot_positions
from petlbench.models.loader import load_backbone


def test_tower_states_and_head_reproduce_the_model_embeddings():
    model, tok, *_ = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    model.eval()
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    enc = tok(["a big red circle in the middle", "a small blue square at the top left and a tiny white ring in the bottom", "we see"],
              padding="max_length", max_length=40, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        vision = model.tower_states("vision", pixel_values=pixels)
        text = model.tower_states("text", input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        assert len(vision.hidden_states) == len(text.hidden_states) == 4 + 1
        torch.testing.assert_close(
            model.tower_head("vision", vision.hidden_states[-1], pool_index=vision.pool_index), model.encode_image(pixels)
        )
        torch.testing.assert_close(
            model.tower_head("text", text.hidden_states[-1], pool_index=text.pool_index),
            model.encode_text(enc["input_ids"], enc["attention_mask"]),
        )
    # EOT = the last real token of each caption (the tokenizer appends <eos>)
    assert text.pool_index.tolist() == (enc["attention_mask"].sum(1) - 1).tolist()


def test_eot_positions_legacy_and_current_rules():
    ids = torch.tensor([[0, 5, 9, 3, 3], [0, 3, 7, 7, 7]])
    assert eot_positions(ids, eos_token_id=3).tolist() == [3, 1]  # first EOT, even when padding reuses it
    assert eot_positions(ids, eos_token_id=2).tolist() == [2, 2]  # legacy: argmax of the ids
