"""The one place where a model name becomes a local checkpoint folder (never a download)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPModel
from transformers.utils import logging as hf_logging

from petlbench.config import ConfigError
from petlbench.models.clip import ClipDualEncoder

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED = {"embedded-clip": ASSETS / "embedded-clip"}


class ModelNotFoundError(ConfigError):
    """No local checkpoint for a model name (nothing is ever downloaded)."""


def resolve(name: str) -> Path:
    """A shipped model name or a local folder holding `config.json`."""
    if name in EMBEDDED:
        return EMBEDDED[name]
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    raise ModelNotFoundError(
        f"model {name!r} is neither a shipped model ({', '.join(sorted(EMBEDDED))}) nor a local "
        "folder with config.json; save a checkpoint with save_pretrained() and pass its path"
    )


def load_clip(name: str, attn_implementation: str, device: torch.device) -> tuple[ClipDualEncoder, object]:
    """Backbone and tokenizer, offline, from the resolved folder."""
    path = resolve(name)
    hf_logging.disable_progress_bar()  # one bar per run would drown the sweep's own progress
    clip = CLIPModel.from_pretrained(path, attn_implementation=attn_implementation, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return ClipDualEncoder(clip).to(device), tokenizer
