"""The one loader (`petlbench.models.loader`): the VSE folder format (towers saved with
save_pretrained, vse.json, optional heads) loaded offline, shipped architectures of both
families, and image processors (the embedded model's reproduces the scenes' pixels)."""

import json

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file
from transformers import BertTokenizer

from petlbench.config import ConfigError
from petlbench.data import scenes
from petlbench.data.pixels import to_pixels
from petlbench.models.loader import RESNET_IMAGE_SIZE, load_architecture, load_backbone
from petlbench.models.resolve import ModelNotFoundError
from petlbench.models.vse import VseDualEncoder, tiny_vse

CPU = torch.device("cpu")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "big", "red", "circle"]
EMBED_DIM = 32
# microsoft/resnet-50's preprocessor_config.json (legacy feature-extractor form), at side 64
RESNET_PROCESSOR = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 64,
}


def _vse_folder(folder, *, processor: bool = False, **spec):
    """A VSE checkpoint as a user would make one: each tower of a seeded `tiny_vse` saved
    with save_pretrained (the tokenizer next to BERT), and vse.json. Returns the model."""
    torch.manual_seed(0)
    model = tiny_vse(embed_dim=EMBED_DIM, vocab_size=len(VOCAB))
    model.resnet.save_pretrained(folder / "resnet")
    model.bert.save_pretrained(folder / "bert")
    BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)}).save_pretrained(folder / "bert")
    if processor:
        (folder / "resnet" / "preprocessor_config.json").write_text(json.dumps(RESNET_PROCESSOR))
    (folder / "vse.json").write_text(json.dumps({"image_tower": "resnet", "text_tower": "bert", "embed_dim": EMBED_DIM, **spec}))
    return model


def _towers(model: VseDualEncoder) -> dict[str, torch.Tensor]:
    return {key: t for key, t in model.state_dict().items() if key.startswith(("resnet.", "bert."))}


def _heads(model: VseDualEncoder) -> dict[str, torch.Tensor]:
    return {key: t for key, t in model.state_dict().items() if not key.startswith(("resnet.", "bert."))}


def test_vse_checkpoint_loads_offline_with_the_towers_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = _vse_folder(tmp_path / "vse", processor=True)
    loaded = load_backbone(str(tmp_path / "vse"), "sdpa", CPU)
    assert isinstance(loaded.backbone, VseDualEncoder) and loaded.backbone.embed_dim == EMBED_DIM
    want, got = _towers(saved), _towers(loaded.backbone)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    assert loaded.tokenizer(["a big red circle"])["input_ids"] == [[2, 5, 6, 7, 8, 3]]  # [CLS] a big red circle [SEP]
    image = scenes.generate(1, (2, 2), seed=0).images[0]  # 48x48: resized to 73, centre 64x64 cropped
    assert loaded.image_processor(images=image, return_tensors="pt")["pixel_values"].shape == (1, 3, 64, 64)
    architecture = load_architecture(str(tmp_path / "vse"))
    assert (architecture.family, architecture.image_size, architecture.max_text_positions, architecture.vocab_size) == ("vse", 64, 40, 9)


def test_vse_heads_are_seeded_unless_saved(tmp_path):
    saved = _vse_folder(tmp_path / "vse")

    towers = [str((tmp_path / "vse" / tower / "model.safetensors").resolve()) for tower in ("resnet", "bert")]
    loaded_from = {}

    def heads(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        loaded = load_backbone(str(tmp_path / "vse"), "sdpa", CPU)
        assert loaded.image_processor is None  # the image tower has no preprocessor_config.json
        loaded_from.update(loaded.weights)
        return _heads(loaded.backbone)

    first, again, other = heads(1), heads(1), heads(2)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["text_projection.weight"], other["text_projection.weight"])
    # the record says which weights no file held
    assert loaded_from == {"folder": str((tmp_path / "vse").resolve()), "files": towers, "new": sorted(_heads(saved))}
    save_file(_heads(saved), tmp_path / "vse" / "heads.safetensors")
    for key, t in heads(1).items():
        torch.testing.assert_close(t, _heads(saved)[key], rtol=0, atol=0, msg=key)
    assert loaded_from["files"] == [*towers, str((tmp_path / "vse" / "heads.safetensors").resolve())] and loaded_from["new"] == []


def test_vse_heads_of_another_width_are_refused(tmp_path):
    saved = _vse_folder(tmp_path / "vse", embed_dim=EMBED_DIM * 2)
    save_file(_heads(saved), tmp_path / "vse" / "heads.safetensors")
    with pytest.raises(ConfigError, match=r"heads\.safetensors: shapes do not match .*embed_dim 64: image_projection\.weight \(32, 32\)"):
        load_backbone(str(tmp_path / "vse"), "sdpa", CPU)


def test_a_vse_tower_from_the_hub_cache(tmp_path, monkeypatch):
    _vse_folder(tmp_path / "vse")
    snapshot = tmp_path / "hub" / "models--someorg--tiny-bert" / "snapshots" / "0123456789abcdef"
    snapshot.parent.mkdir(parents=True)
    (tmp_path / "vse" / "bert").rename(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123456789abcdef")
    (tmp_path / "vse" / "vse.json").write_text(
        json.dumps({"image_tower": "resnet", "text_tower": "someorg/tiny-bert", "embed_dim": EMBED_DIM})
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_backbone(str(tmp_path / "vse"), "sdpa", CPU).backbone.bert.config.vocab_size == len(VOCAB)


def test_a_missing_tower_names_vse_json_and_the_key(tmp_path, cli):
    _vse_folder(tmp_path / "vse", text_tower="no-such-bert")
    with pytest.raises(ModelNotFoundError, match=r"vse\.json key 'text_tower': model 'no-such-bert' is neither"):
        load_backbone(str(tmp_path / "vse"), "sdpa", CPU)
    code, _, err = cli("estimate", "--model", str(tmp_path / "vse"), "--batch-size", "2")
    assert code == 2 and "vse.json key 'text_tower'" in err and "nothing is downloaded" in err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"embed_dim": 0}, r"vse\.json key 'embed_dim': expected a positive integer"),
        ({"embed_dim": "32"}, r"vse\.json key 'embed_dim': expected a positive integer"),
        ({"extra": 1}, r"vse\.json: expected an object with exactly the keys image_tower, text_tower, embed_dim"),
        ({"image_tower": "bert"}, r"vse\.json key 'image_tower': .*config\.json describes a 'bert' model; expected 'resnet'"),
        ({"text_tower": ["bert"]}, r"vse\.json key 'text_tower': expected a model name or a path"),
    ],
)
def test_a_bad_vse_json_is_a_config_error(tmp_path, change, message):
    _vse_folder(tmp_path / "vse", **change)
    with pytest.raises(ConfigError, match=message):
        load_architecture(str(tmp_path / "vse"))


def test_a_folder_of_another_model_type_is_a_config_error(tmp_path):
    tiny_vse().bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(
        ConfigError, match=r"describes a 'bert' model; expected 'clip' or 't5' \(a ResNet \+ BERT pair is a folder with vse\.json\)"
    ):
        load_architecture(str(tmp_path / "bert"))


def test_shipped_vse_architecture_is_resnet50_and_bert_base():
    architecture = load_architecture("resnet50-bert-base")
    assert (architecture.family, architecture.image_size, architecture.num_channels) == ("vse", RESNET_IMAGE_SIZE, 3)
    assert (architecture.max_text_positions, architecture.vocab_size) == (512, 30522)
    with torch.device("meta"):
        model = architecture.build("sdpa")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # published totals less the heads this backbone drops: torchvision's ResNet-50 (25,557,032)
    # without its 1000-way classifier; bert-base-uncased (109,482,240) without its pooler
    assert count(model.resnet) == 25_557_032 - (2048 * 1000 + 1000)
    assert count(model.bert) == 109_482_240 - (768 * 768 + 768)
    assert model.embed_dim == 1024
    with pytest.raises(ModelNotFoundError, match="without weights"):
        load_backbone("resnet50-bert-base", "sdpa", CPU)


def test_embedded_image_processor_reproduces_the_scene_pixels():
    processor = load_backbone("embedded-clip", "sdpa", CPU).image_processor
    images = scenes.generate(4, (2, 3), seed=0).images
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    assert pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, to_pixels(images), rtol=0, atol=1e-6)
