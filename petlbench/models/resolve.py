"""The one place where a model name becomes a local folder (never a download): a shipped
checkpoint, a shipped architecture (config only, for estimates), a user's folder, or a
Hugging Face id already in the local cache."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from transformers import AutoTokenizer, CLIPConfig, CLIPModel
from transformers.utils import logging as hf_logging

from petlbench.config import ConfigError
from petlbench.models.clip import ClipDualEncoder

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED = {"embedded-clip": ASSETS / "embedded-clip"}
# Real-size architectures without weights (assets/architectures/README.md).
ARCHITECTURES = {path.name: path for path in sorted((ASSETS / "architectures").iterdir()) if path.is_dir()}


class ModelNotFoundError(ConfigError):
    """No local checkpoint for a model name (nothing is ever downloaded)."""


def resolve(name: str, weights: bool = True) -> Path:
    """A shipped model name, a shipped architecture name (only when ``weights`` is False:
    it has a config and nothing else), or a local folder holding `config.json`."""
    if name in EMBEDDED:
        return EMBEDDED[name]
    if name in ARCHITECTURES:
        if weights:
            raise ModelNotFoundError(
                f"model {name!r} is a shipped architecture without weights (for `petlbench estimate`); "
                "to train it, save a checkpoint with save_pretrained() and pass its path"
            )
        return ARCHITECTURES[name]
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    cached = _hub_cache(name)
    if cached is not None:
        return cached
    raise ModelNotFoundError(
        f"model {name!r} is neither a shipped model ({', '.join(EMBEDDED)}), nor a shipped architecture for estimates "
        f"({', '.join(ARCHITECTURES)}), nor a local folder with config.json, nor a Hugging Face id in the local cache "
        f"({constants.HF_HUB_CACHE}); nothing is downloaded: fetch it on a machine with network (`hf download {name}`) "
        "and copy the cache folder, or save_pretrained() a checkpoint and pass its path"
    )


def _hub_cache(name: str) -> Path | None:
    """The cached snapshot of Hugging Face id ``name``, looked up without any network access."""
    if name.count("/") != 1 or Path(name).expanduser().exists():
        return None
    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError):
        return None


def load_config(name: str) -> CLIPConfig:
    """The architecture of a shipped model, a shipped architecture or a local folder."""
    return CLIPConfig.from_pretrained(resolve(name, weights=False), local_files_only=True)


def load_clip(name: str, attn_implementation: str, device: torch.device) -> tuple[ClipDualEncoder, object]:
    """Backbone and tokenizer, offline, from the resolved folder."""
    path = resolve(name)
    hf_logging.disable_progress_bar()  # one bar per run would drown the sweep's own progress
    clip = CLIPModel.from_pretrained(path, attn_implementation=attn_implementation, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return ClipDualEncoder(clip).to(device), tokenizer
