"""The one place where a model name becomes a local folder (never a download): a shipped
checkpoint, a shipped architecture (config only, for estimates), a user's folder, or a
Hugging Face id already in the local cache. `petlbench.models.loader` reads the folder."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from petlbench.config import ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED = {name: ASSETS / name for name in ("embedded-clip", "embedded-t5")}
# Real-size architectures without weights (assets/architectures/README.md).
ARCHITECTURES = {path.name: path for path in sorted((ASSETS / "architectures").iterdir()) if path.is_dir()}
# What makes a folder a ResNet + BERT pair (`petlbench.models.loader`); a CLIP folder has config.json.
VSE_FILE = "vse.json"


class ModelNotFoundError(ConfigError):
    """No local checkpoint for a model name (nothing is ever downloaded)."""


def resolve(name: str, weights: bool = True) -> Path:
    """A shipped model name, a shipped architecture name (only when ``weights`` is False:
    it has configs and nothing else), or a local folder holding `config.json` (or the
    `vse.json` of a ResNet + BERT pair)."""
    if name in EMBEDDED:
        return EMBEDDED[name]
    if name in ARCHITECTURES:
        if weights:
            raise ModelNotFoundError(
                f"model {name!r} is a shipped architecture without weights (for `petlbench estimate`); "
                "to train it, pass a checkpoint folder (save_pretrained(); for a ResNet + BERT pair, a folder with vse.json)"
            )
        return ARCHITECTURES[name]
    path = Path(name).expanduser()
    if (path / "config.json").is_file() or (path / VSE_FILE).is_file():
        return path
    cached = _hub_cache(name)
    if cached is not None:
        return cached
    raise ModelNotFoundError(
        f"model {name!r} is neither a shipped model ({', '.join(EMBEDDED)}), nor a shipped architecture for estimates "
        f"({', '.join(ARCHITECTURES)}), nor a local folder with config.json or vse.json, nor a Hugging Face id in the local cache "
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
