"""Model names resolve offline: a folder saved with save_pretrained and a Hugging Face id
in the local cache load through the same code path as the shipped model (and so does a
VSE tower: tests/test_models.py)."""

import pytest
import torch
from huggingface_hub import constants

from petlbench.models.loader import load_backbone
from petlbench.models.resolve import ModelNotFoundError


@pytest.fixture
def shipped():
    model, tok, *_ = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    return model.eval(), tok


def _embeddings(model, tok):
    enc = tok(["a big red circle in the middle"], padding="max_length", max_length=32, return_tensors="pt")
    pixels = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(enc["input_ids"], enc["attention_mask"])


def _save(model, tok, folder):
    model.clip.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_folder_saved_with_save_pretrained(shipped, tmp_path):
    _save(*shipped, tmp_path / "ckpt")
    loaded, tok, image_processor, _ = load_backbone(str(tmp_path / "ckpt"), "sdpa", torch.device("cpu"))
    for a, b in zip(_embeddings(loaded.eval(), tok), _embeddings(*shipped), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert image_processor is None  # no preprocessor_config.json was saved


def test_hub_id_from_the_local_cache_without_network(shipped, tmp_path, monkeypatch):
    # the cache layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/<rev>/...}
    repo = tmp_path / "hub" / "models--someorg--tiny-clip"
    _save(*shipped, repo / "snapshots" / "0123456789abcdef")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded, tok, *_ = load_backbone("someorg/tiny-clip", "sdpa", torch.device("cpu"))
    for a, b in zip(_embeddings(loaded.eval(), tok), _embeddings(*shipped), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    with pytest.raises(ModelNotFoundError, match="nothing is downloaded"):
        load_backbone("someorg/not-cached", "sdpa", torch.device("cpu"))
