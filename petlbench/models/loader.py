"""One loader for every backbone family, offline (`resolve`: nothing is ever downloaded,
no remote code runs): `load_backbone` gives a backbone of any family
(`petlbench.models.backbone`) with its tokenizer and image processor, to train;
`load_architecture` reads the configs only, for estimates and checks.

A model folder is one of three families:

- ``clip``: `config.json` of a `CLIPModel`, its weights and tokenizer, and optionally
  `preprocessor_config.json` (the image processor).
- ``t5``: `config.json` of a T5 (`model_type` t5), loaded as `T5ForConditionalGeneration`,
  with its weights and tokenizer (an encoder-decoder: no image processor).
- ``vse`` (a ResNet image tower with a BERT text tower, `VseDualEncoder`): `vse.json`,

      {"image_tower": NAME_OR_PATH, "text_tower": NAME_OR_PATH, "embed_dim": 1024}

  Each tower resolves like a model name: a folder (relative paths are relative to the folder
  of vse.json), a shipped architecture, or a Hugging Face id in the local cache
  ("microsoft/resnet-50", "google-bert/bert-base-uncased"). The image tower is a `ResNetModel`
  and brings the image processor (its `preprocessor_config.json`, if any); the text tower is
  a `BertModel` and brings the tokenizer. The joint-space heads (the two projections and the
  logit scale: every parameter outside the towers) come from `heads.safetensors` next to
  vse.json when there is one (optional; its keys are `VseDualEncoder.state_dict()`'s without
  the `resnet.` and `bert.` ones), and are otherwise new: random, from the caller's
  `torch.manual_seed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    PreTrainedConfig,
    ResNetConfig,
    ResNetModel,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.utils import logging as hf_logging

from petlbench import jsonfile
from petlbench.config import ConfigError
from petlbench.models.clip import ClipDualEncoder
from petlbench.models.resolve import VSE_FILE, ModelNotFoundError, resolve
from petlbench.models.t5 import T5EncoderDecoder
from petlbench.models.vse import VseDualEncoder, vse_from_configs

HEADS_FILE = "heads.safetensors"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# Offline, and no code from a checkpoint folder is ever imported.
OFFLINE: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
# Image side for a ResNet whose folder has no image processor: the ImageNet resolution
# ResNets are trained and evaluated at (microsoft/resnet-50's processor resizes to 256 and
# crops the centre 224x224).
RESNET_IMAGE_SIZE = 224
# Config keys that are sizes or counts (CLIP, BERT, ResNet and T5 configs, at any depth): each a
# positive integer (a list of them for a ResNet's per-stage widths and depths), at most
# MAX_SIZE. A zero, a negative or a float would fail deep inside the library, or build a
# model that is not the checkpoint's.
SIZE_KEYS = frozenset(
    {
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings",
        "image_size", "patch_size", "num_channels", "projection_dim", "embedding_size", "hidden_sizes", "depths",
        "d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "relative_attention_num_buckets",
        "relative_attention_max_distance",
    }
)  # fmt: skip
MAX_CONFIG_BYTES = 2**24  # a model's config.json is a few KiB; its weights and vocabulary live elsewhere
MAX_SIZE = 2**24  # beyond any published model's width, depth, vocabulary or image side
# What a tokenizer is made of: without one of these files transformers builds a tokenizer
# with no vocabulary, which maps every word to <unk> and trains without a word of warning.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


class LoadedModel(NamedTuple):
    """A backbone ready to train and what turns text and images into its inputs."""

    backbone: nn.Module  # a `Backbone`: ClipDualEncoder, VseDualEncoder or T5EncoderDecoder
    tokenizer: Any
    image_processor: Any  # None when the folder has no preprocessor_config.json
    weights: dict[str, Any]  # what the weights came from: the record's `weights` section (`schema.Weights`)


@dataclass(frozen=True)
class Architecture:
    """What estimates and checks need of a model, from its configs alone (no weights)."""

    family: str  # "clip", "vse" or "t5": the family methods register builders for (`MethodSpec.builder`)
    max_text_positions: int
    vocab_size: int
    # attn_implementation -> the backbone with new (random) weights, on the default device
    # (``torch.device("meta")`` for an estimate)
    build: Callable[[str], nn.Module] = field(repr=False)
    image_size: int | None = None  # the side of the square images the model is fed (None: it reads no images)
    num_channels: int | None = None


def clip_architecture(config: CLIPConfig) -> Architecture:
    """A CLIP's architecture: the image size is fixed by its position embeddings."""
    vision, text = config.vision_config, config.text_config
    return Architecture(
        "clip",
        text.max_position_embeddings,
        text.vocab_size,
        build=lambda attn: ClipDualEncoder(AutoModel.from_config(config, attn_implementation=attn)),
        image_size=vision.image_size,
        num_channels=vision.num_channels,
    )


def vse_architecture(resnet: ResNetConfig, bert: BertConfig, embed_dim: int, image_size: int = RESNET_IMAGE_SIZE) -> Architecture:
    """A ResNet + BERT pair's architecture; a CNN takes any image size, so it is given."""
    return Architecture(
        "vse",
        bert.max_position_embeddings,
        bert.vocab_size,
        build=lambda attn: vse_from_configs(resnet, bert, embed_dim, attn),
        image_size=image_size,
        num_channels=resnet.num_channels,
    )


# The source length of a T5 without `n_positions` in its config: relative positions have no
# limit, and T5 was pre-trained on 512-token inputs.
T5_TEXT_POSITIONS = 512


def t5_architecture(config: T5Config) -> Architecture:
    """A T5's architecture: relative positions, so the source length is the one it was
    pre-trained at (`n_positions`)."""
    return Architecture(
        "t5",
        getattr(config, "n_positions", None) or T5_TEXT_POSITIONS,
        config.vocab_size,
        build=lambda attn: T5EncoderDecoder(AutoModelForSeq2SeqLM.from_config(config, attn_implementation=attn)),
    )


def load_architecture(name: str, weights: bool = False) -> Architecture:
    """The architecture of model ``name``; with ``weights``, an error where `load_backbone`
    would find none to load (a shipped architecture), before anything runs."""
    folder = resolve(name, weights)
    if (folder / VSE_FILE).is_file():
        vse = _VseFolder.read(folder, weights)
        return vse_architecture(vse.resnet, vse.bert, vse.embed_dim, _processor_image_size(vse.image) or RESNET_IMAGE_SIZE)
    config = _main_config(folder, f"model {name!r}")
    return t5_architecture(config) if isinstance(config, T5Config) else clip_architecture(config)


def check_weights(name: str, allow_pickle: bool) -> None:
    """Weights load from safetensors only, unless ``allow_pickle``: a pickled checkpoint
    (pytorch_model.bin) can run code when it is loaded. And a safetensors checkpoint must
    fill the model: every weight it needs, of its shape, and nothing it does not have
    (`_check_filled`; transformers would start a missing weight from random values and say
    so only in a log line). Raises `ConfigError` naming the folder or file at fault."""
    folder = resolve(name)
    if (folder / VSE_FILE).is_file():
        vse = _VseFolder.read(folder, weights=True)
        towers = [(vse.image, lambda: ResNetModel(vse.resnet)), (vse.text, lambda: BertModel(vse.bert, add_pooling_layer=False))]
    else:
        config = _main_config(folder, f"model {name!r}")
        towers = [(folder, lambda: T5ForConditionalGeneration(config) if isinstance(config, T5Config) else CLIPModel(config))]
    for tower, model in towers:
        if not allow_pickle and not any(tower.glob("*.safetensors*")) and any(tower.glob("pytorch_model*.bin*")):
            raise ConfigError(
                f"model {name!r}: {tower} holds pickled weights only (pytorch_model.bin), which can run code when loaded: "
                "convert them to safetensors (save_pretrained(..., safe_serialization=True)), or allow them with "
                "--set model.allow_pickle=true"
            )
        _check_filled(tower, model, whole=tower == folder)


SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"


def _header(folder: Path) -> tuple[Path, dict[str, tuple[int, ...]]] | None:
    """(the file named in messages, weight name -> shape) from the header(s) of ``folder``'s
    safetensors checkpoint, one file or shards listed by an index; None without one."""
    files = _weight_files(folder, allow_pickle=False)
    if not files:
        return None
    named = folder / SAFETENSORS if (folder / SAFETENSORS).is_file() else folder / SAFETENSORS_INDEX
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(file, "pt") as tensors:
                shapes.update({key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()})  # noqa: SIM118 (not a dict)
        except Exception as exc:  # safetensors raises its own error types for a broken header
            raise ConfigError(f"{file}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return named, shapes


def _listed_keys(keys: list[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _check_filled(folder: Path, model: Callable[[], nn.Module], whole: bool) -> None:
    """``folder``'s safetensors checkpoint against the weights of the library model
    ``model()`` builds (on the meta device: no memory): every one present with its shape. A ``whole`` checkpoint is
    the model itself, so a weight it does not have is an error too; a tower's checkpoint
    may be a larger model's (BERT with its pre-training heads, a ResNet with its
    classifier), whose weights carry the model's prefix ("bert.") and whose extra heads
    transformers leaves out, as here."""
    found = _header(folder)
    if found is None:
        return
    file, shapes = found
    with torch.device("meta"):
        built = model()
        aliases = _weight_aliases(built)
    if not whole:
        prefix = f"{built.base_model_prefix}."
        shapes = {key.removeprefix(prefix): shape for key, shape in shapes.items()}
    if missing := sorted(names[0] for names in aliases if not set(names) & set(shapes)):
        many = len(missing) > 1
        raise ConfigError(
            f"{file}: {len(missing)} weight{'s' if many else ''} the model needs {'are' if many else 'is'} missing "
            f"({_listed_keys(missing)}): it would start from random values; use the checkpoint the config belongs to"
        )
    known = {name for names in aliases for name in names}
    ignored = getattr(built, "_keys_to_ignore_on_load_unexpected", None) or []
    if whole and (unexpected := sorted(key for key in set(shapes) - known if key not in ignored)):
        many = len(unexpected) > 1
        raise ConfigError(
            f"{file}: {len(unexpected)} weight{'s' if many else ''} the model does not have: {_listed_keys(unexpected)} "
            "(a checkpoint of another model, or of this one with other heads)"
        )
    expected = {name: shape for names, shape in aliases.items() for name in names}
    if wrong := [
        f"{key} {shapes[key]}, the model's is {shape}" for key, shape in expected.items() if key in shapes and shapes[key] != shape
    ]:
        raise ConfigError(f"{file}: weights of another shape than config.json says: {_listed_keys(wrong, 3)}")


def _weight_aliases(model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every weight of ``model`` (its state dict) once, under all the names it has (a tied
    weight, such as T5's token embeddings, its encoder's, its decoder's and its LM head,
    has several, and a checkpoint holds it under any one of them), with its shape."""
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    groups: dict[int, list[str]] = {}
    for name in model.state_dict():
        groups.setdefault(id(tensors[name]), []).append(name)
    return {tuple(group): tuple(tensors[group[0]].shape) for group in groups.values()}


def load_backbone(name: str, attn_implementation: str, device: torch.device, allow_pickle: bool = False) -> LoadedModel:
    """Model ``name`` with its weights (safetensors only unless ``allow_pickle``: see
    `check_weights`), tokenizer and image processor, on ``device``."""
    folder = resolve(name)
    check_weights(name, allow_pickle)
    weights = {**OFFLINE, "use_safetensors": None if allow_pickle else True}  # None: safetensors first, pickle as fallback
    hf_logging.disable_progress_bar()  # one bar per run would drown the sweep's own progress
    if (folder / VSE_FILE).is_file():
        vse = _VseFolder.read(folder, weights=True)
        resnet = ResNetModel.from_pretrained(vse.image, **weights)
        bert = BertModel.from_pretrained(vse.text, attn_implementation=attn_implementation, add_pooling_layer=False, **weights)
        backbone = VseDualEncoder(resnet, bert, vse.embed_dim)
        files, new = [*_weight_files(vse.image, allow_pickle), *_weight_files(vse.text, allow_pickle)], []
        if (folder / HEADS_FILE).is_file():
            _load_heads(backbone, folder / HEADS_FILE)
            files.append(folder / HEADS_FILE)
        else:
            new = sorted(key for key in backbone.state_dict() if not key.startswith(("resnet.", "bert.")))
    else:
        if isinstance(_main_config(folder, f"model {name!r}"), T5Config):
            backbone = T5EncoderDecoder(
                T5ForConditionalGeneration.from_pretrained(folder, attn_implementation=attn_implementation, **weights)
            )
        else:
            backbone = ClipDualEncoder(CLIPModel.from_pretrained(folder, attn_implementation=attn_implementation, **weights))
        files, new = _weight_files(folder, allow_pickle), []
    loaded = {"folder": str(folder.resolve()), "files": [str(file.resolve()) for file in files], "new": new}
    return LoadedModel(backbone.to(device), *load_preprocessors(name), loaded)


def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The files transformers loads ``folder``'s weights from: its safetensors checkpoint
    (one file, or the shards its index lists), else, where allowed, its pickled one."""
    if (folder / SAFETENSORS).is_file():
        return [folder / SAFETENSORS]
    if (index := folder / SAFETENSORS_INDEX).is_file():
        try:
            return sorted({folder / shard for shard in read_json_object(index)["weight_map"].values()})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{index}: not a safetensors index ({type(exc).__name__}: {exc})") from None
    return sorted(folder.glob("pytorch_model*.bin")) if allow_pickle else []


def load_preprocessors(name: str) -> tuple[Any, Any]:
    """The tokenizer and the image processor (None without preprocessor_config.json) of
    model ``name``: what turns data into its inputs, checked before a sweep starts. The
    tokenizer must be made of its files (`TOKENIZER_FILES`) and give no id past the text
    tower's embeddings; the image processor must make the images a CLIP's position
    embeddings are sized for."""
    folder = resolve(name)
    if (folder / VSE_FILE).is_file():
        vse = _VseFolder.read(folder, weights=True)
        text_folder, image_folder, vocab_size, image_size = vse.text, vse.image, vse.bert.vocab_size, None
    else:
        config = _main_config(folder, f"model {name!r}")
        text_folder = image_folder = folder
        if isinstance(config, T5Config):
            vocab_size, image_size = config.vocab_size, None
        else:
            vocab_size, image_size = config.text_config.vocab_size, config.vision_config.image_size
    files = [file for file in (*TOKENIZER_FILES, "tokenizer_config.json") if (text_folder / file).is_file()]
    if not set(files) & set(TOKENIZER_FILES):
        raise ConfigError(
            f"model {name!r}: {text_folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); transformers would make "
            "a tokenizer without a vocabulary: save the checkpoint's tokenizer next to it (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(text_folder, **OFFLINE)
    except Exception as exc:  # the library raises whatever its parsers raise on a broken file
        raise ConfigError(
            f"model {name!r}: the tokenizer in {text_folder} ({', '.join(files)}) does not load ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"model {name!r}: the tokenizer in {text_folder} has {len(tokenizer)} tokens, more than the {vocab_size} "
            "the text tower embeds (a tokenizer of another model)"
        )
    processor = _image_processor(image_folder)
    if image_size is not None and (size := _processor_image_size(image_folder)) is not None and size != image_size:
        raise ConfigError(
            f"{image_folder / IMAGE_PROCESSOR_FILE}: makes {size}x{size} images; the model's position embeddings are for "
            f"{image_size}x{image_size} (config.json key 'vision_config.image_size')"
        )
    return tokenizer, processor


@dataclass(frozen=True)
class _VseFolder:
    """A validated vse.json: its path, the towers' folders and configs, the joint width."""

    file: Path
    image: Path
    text: Path
    resnet: ResNetConfig
    bert: BertConfig
    embed_dim: int

    @classmethod
    def read(cls, folder: Path, weights: bool) -> _VseFolder:
        """The vse.json of ``folder``; ``weights`` as in `resolve`, for both towers."""
        path = folder / VSE_FILE
        spec = read_json_object(path)
        keys = ("image_tower", "text_tower", "embed_dim")
        if not isinstance(spec, dict) or set(spec) != set(keys):
            found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
            raise ConfigError(f"{path}: expected an object with exactly the keys {', '.join(keys)}; found {found}")
        embed_dim = spec["embed_dim"]
        if type(embed_dim) is not int or embed_dim < 1:
            raise ConfigError(f"{path} key 'embed_dim': expected a positive integer (the joint embedding width), got {embed_dim!r}")
        image, text = (_tower(path, key, spec[key], weights) for key in ("image_tower", "text_tower"))
        resnet = _config(image, ResNetConfig, f"{path} key 'image_tower'")
        return cls(path, image, text, resnet, _config(text, BertConfig, f"{path} key 'text_tower'"), embed_dim)


def _tower(vse_file: Path, key: str, name: Any, weights: bool) -> Path:
    """The folder of tower ``name`` (``key`` of ``vse_file``)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{vse_file} key {key!r}: expected a model name or a path, got {name!r}")
    local = vse_file.parent / Path(name).expanduser()  # an absolute path stays as it is
    try:
        return resolve(str(local) if local.is_dir() else name, weights)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{vse_file} key {key!r}: {exc}") from None


def _main_config(folder: Path, where: str) -> CLIPConfig | T5Config:
    """The config of a folder without vse.json: a T5's where config.json says so, else a CLIP's."""
    path = folder / "config.json"
    is_t5 = path.is_file() and read_json_object(path).get("model_type") == T5Config.model_type
    return _config(folder, T5Config if is_t5 else CLIPConfig, where)


def _config(folder: Path, config_cls: type[PreTrainedConfig], where: str) -> PreTrainedConfig:
    """``config_cls`` from ``folder``/config.json, which must describe that model type with
    sane sizes (`_check_sizes`), and from which the library model must build (on the meta
    device: no memory). Raises `ConfigError` naming the file."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{where}: {folder} has no config.json")
    spec = read_json_object(path)
    model_type = spec.get("model_type")
    if model_type != config_cls.model_type:
        vse = f" or 't5' (a ResNet + BERT pair is a folder with {VSE_FILE})" if config_cls is CLIPConfig else ""
        raise ConfigError(f"{where}: {path} describes a {model_type!r} model; expected {config_cls.model_type!r}{vse}")
    _check_sizes(path, spec)
    try:
        config = config_cls.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            AutoModel.from_config(config)
    except (StrictDataclassError, TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError) as exc:  # the library's checks
        raise ConfigError(f"{path}: not a config the model can be built from ({type(exc).__name__}: {_first_line(exc)})") from None
    return config


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (`petlbench.jsonfile`: strictly read); `ConfigError`
    naming it where it is anything else."""
    try:
        data = jsonfile.read(path, MAX_CONFIG_BYTES, "config")
    except jsonfile.Unreadable as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a JSON {type(data).__name__}, not an object")
    return data


def _check_sizes(path: Path, spec: dict[str, Any], where: str = "") -> None:
    """Every `SIZE_KEYS` value in ``spec`` and its nested sections a positive integer of at
    most `MAX_SIZE` (or a list of them), and a patch no larger than its image."""
    for key, value in spec.items():
        at = f"{where}{key}"
        if isinstance(value, dict):
            _check_sizes(path, value, f"{at}.")
        elif key in SIZE_KEYS:
            values = value if isinstance(value, list) and value else [value]
            if not all(type(v) is int and 1 <= v <= MAX_SIZE for v in values):
                raise ConfigError(
                    f"{path} key {at!r}: expected a positive integer of at most {MAX_SIZE:,} (a size or a count), got {value!r}"
                )
    if isinstance(spec.get("patch_size"), int) and isinstance(spec.get("image_size"), int) and spec["patch_size"] > spec["image_size"]:
        raise ConfigError(
            f"{path} key '{where}patch_size': {spec['patch_size']} is larger than the image ('{where}image_size' {spec['image_size']})"
        )


def _first_line(exc: BaseException) -> str:
    """An exception's message on one line (the library's span several)."""
    return " ".join(str(exc).split())[:300]


def _load_heads(model: VseDualEncoder, path: Path) -> None:
    """The joint-space heads of ``model`` from ``path`` (every key outside the towers, each
    of its shape)."""
    heads = load_file(path)
    own = {key: t for key, t in model.state_dict().items() if not key.startswith(("resnet.", "bert."))}
    if set(heads) != set(own):
        raise ConfigError(f"{path}: expected the keys {', '.join(sorted(own))}; found {', '.join(sorted(heads))}")
    wrong = [f"{key} {tuple(heads[key].shape)} (expected {tuple(t.shape)})" for key, t in own.items() if heads[key].shape != t.shape]
    if wrong:
        raise ConfigError(f"{path}: shapes do not match the towers and embed_dim {model.embed_dim}: {', '.join(wrong)}")
    model.load_state_dict(heads, strict=False)


def _image_processor(folder: Path) -> Any:
    """The image processor of ``folder``, None without preprocessor_config.json. Always the
    PIL backend: the same pixels on every machine (the torchvision backend resizes
    differently), and no warning where torchvision is missing. Imported from its module:
    transformers 5.17 exports a placeholder that demands torchvision."""
    path = folder / IMAGE_PROCESSOR_FILE
    if not path.is_file():
        return None
    read_json_object(path)
    try:
        return AutoImageProcessor.from_pretrained(folder, backend="pil", **OFFLINE)
    except Exception as exc:  # the library raises whatever a broken value makes it raise
        raise ConfigError(f"{path}: not an image processor that loads ({type(exc).__name__}: {_first_line(exc)})") from None


def _processor_image_size(folder: Path) -> int | None:
    """The side of the square images the image processor of ``folder`` makes: its centre
    crop, else its resize target; None without preprocessor_config.json."""
    path = folder / IMAGE_PROCESSOR_FILE
    if not path.is_file():
        return None
    config = read_json_object(path)
    keys = ("crop_size", "size") if config.get("do_center_crop", True) else ("size",)
    for key in keys:
        value = config.get(key)  # an int (legacy), or {"height", "width"} / {"shortest_edge"}
        if isinstance(value, dict):
            value = value.get("height", value.get("shortest_edge"))
        if isinstance(value, int):
            return value
    return None
