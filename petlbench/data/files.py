"""Image-text data sets on disk: Karpathy-split JSON (Flickr30K, COCO) and JSONL manifests.

Layout (the suite's `data` section): ``data.root`` holds the annotation file
(``data.annotations``) and the images folder (``data.images``).
- Karpathy JSON (``dataset_flickr30k.json``, ``dataset_coco.json``): ``{"images": [{"filename",
  "split", "sentences": [{"raw"}], "filepath"?}]}``; an image lies at
  ``images/[filepath/]filename``; ``restval`` (COCO) joins training (docs/measurement.md,
  "Retrieval accuracy").
- JSONL manifest: one ``{"image": path, "captions": [...], "split": "train"|"val"|"test"}``
  per line, ``image`` relative to the images folder (or absolute).
Each image keeps its first ``data.captions_per_image`` captions; fewer is an error.

`read` parses and checks the annotations (cheap); `validate` also checks that every image
exists and is a readable image, before any run starts. Every problem is a `ConfigError`
naming the path (exit code 2). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from petlbench.config import ConfigError, DataConfig, short

SPLITS = ("train", "val", "test")
# Karpathy's split names, as the splits they join.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
# How many missing or unreadable images an error lists by name.
SHOWN = 5


@dataclass(frozen=True)
class ImageItem:
    path: Path
    captions: tuple[str, ...]


def _folders(cfg: DataConfig) -> tuple[Path, Path]:
    """The annotation file and the images folder, checked to exist."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root: no such folder: {root} (set it with --set data.root=PATH)")
    annotations, images = root / cfg.annotations, root / cfg.images
    if not annotations.is_file():
        raise ConfigError(f"data.annotations: no such file: {annotations}")
    if not images.is_dir():
        raise ConfigError(f"data.images: no such folder: {images}")
    return annotations, images


def _karpathy(path: Path, images: Path) -> Iterator[tuple[str, str, Path, list]]:
    """(where, split, image path, captions) of every image of a Karpathy JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a Karpathy-split JSON object with a list under 'images'")
    for i, entry in enumerate(entries):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {short(entry)} is not an object with 'filename', 'split' and 'sentences'")
        missing = [key for key in ("filename", "split", "sentences") if key not in entry]
        if missing:
            raise ConfigError(f"{where}: missing key {missing[0]!r} (each image needs 'filename', 'split' and 'sentences' with 'raw')")
        split, name, sentences = _text(entry["split"], where, "split"), _text(entry["filename"], where, "filename"), entry["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
            raise ConfigError(f"{where}: 'sentences' must be a list of objects with 'raw'")
        if split not in KARPATHY_SPLITS:
            raise ConfigError(f"{where}: split {short(split)} is not one of {', '.join(KARPATHY_SPLITS)}")
        yield (
            where,
            KARPATHY_SPLITS[split],
            images / _text(entry.get("filepath", ""), where, "filepath") / name,
            [s["raw"] for s in sentences],
        )


def _jsonl(path: Path, images: Path) -> Iterator[tuple[str, str, Path, list]]:
    """(where, split, image path, captions) of every line of a JSONL manifest."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise ConfigError(f"{where}: not valid JSON: {exc}") from None
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: {short(entry)} is not an object with 'image', 'captions' and 'split'")
            missing = [key for key in ("image", "captions", "split") if key not in entry]
            if missing:
                raise ConfigError(f"{where}: missing key {missing[0]!r} (each line needs 'image', 'captions' and 'split')")
            split, image, captions = _text(entry["split"], where, "split"), entry["image"], entry["captions"]
            if split not in SPLITS:
                raise ConfigError(f"{where}: split {short(split)} is not one of {', '.join(SPLITS)}")
            if not isinstance(captions, list):
                raise ConfigError(f"{where}: 'captions' must be a list of strings")
            yield where, split, images / _text(image, where, "image"), captions


READERS = {"karpathy": _karpathy, "jsonl": _jsonl}


def _text(value, where: str, key: str) -> str:
    """``value``, which annotation ``key`` at ``where`` must hold as a string of valid UTF-8
    (JSON can spell a lone surrogate, which no tokenizer takes)."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{where}: {key} {short(value)} is not valid UTF-8 text (a lone surrogate)") from None
    return value


def read(cfg: DataConfig) -> dict[str, list[ImageItem]]:
    """The train / val / test images of the annotation file, in file order, each with its
    first ``captions_per_image`` captions, each split cut to its configured size."""
    annotations, images = _folders(cfg)
    return _read(cfg.kind, annotations, images, cfg.captions_per_image, tuple(getattr(cfg, f"{s}_images") for s in SPLITS))


@functools.cache
def _read(kind: str, annotations: Path, images: Path, k: int, sizes: tuple[int, ...]) -> dict[str, list[ImageItem]]:
    """`read`, once per process: a sweep reads its annotations once."""
    splits: dict[str, list[ImageItem]] = {s: [] for s in SPLITS}
    try:
        entries = list(READERS[kind](annotations, images))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{annotations}: not UTF-8 text: {exc}") from None
    # the file (its real path: another spelling, through `..` or a link, is the same image)
    # -> (where, split, path as listed) of its first entry
    first: dict[Path, tuple[str, str, Path]] = {}
    for where, split, path, captions in entries:
        for caption in captions:
            _text(caption, where, "every caption")
        if len(captions) < k:
            raise ConfigError(f"{where}: {len(captions)} captions, fewer than data.captions_per_image = {k}")
        if blank := [i for i, caption in enumerate(captions[:k]) if not caption.strip()]:
            raise ConfigError(f"{where}: caption {blank[0]} is empty or only whitespace (captions are the retrieval targets)")
        file = path.resolve()
        if file in first:
            earlier, earlier_split, earlier_path = first[file]
            rule = (
                f"in two splits ({earlier_split} and {split}: test images would leak into training)" if earlier_split != split else "twice"
            )
            alias = (
                f" as {earlier_path.relative_to(images) if earlier_path.is_relative_to(images) else earlier_path}"
                if earlier_path != path
                else ""
            )
            raise ConfigError(
                f"{where}: image {path.name} is listed {rule}, first at {earlier.rsplit(': ', 1)[-1]}{alias} (the same file, {file}); "
                "each image must appear once"
            )
        first[file] = (where, split, path)
        splits[split].append(ImageItem(path, tuple(captions[:k])))
    for split, size in zip(SPLITS, sizes, strict=True):
        if not splits[split]:
            raise ConfigError(f"{annotations}: the {split} split has no images")
        if size:
            splits[split] = splits[split][:size]
    return splits


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not a readable image (None when it is). `verify` checks a file's
    structure but does not decode JPEG data (a truncated JPEG passes it), so the image is
    also decoded, at 1/8 scale where the format allows (JPEG's draft mode): cheap enough
    for COCO's 123K images."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # PIL raises many types for a broken file
        return f"{type(exc).__name__}: {exc}"
    return None


def _listed(problems: list[tuple[Path, str]]) -> str:
    shown = "; ".join(f"{path} ({why})" if why != "missing" else str(path) for path, why in problems[:SHOWN])
    return shown + (f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")


_VALIDATED: set[tuple[Path, ...]] = set()  # the images checked in this process (a learning-rate sweep plans many runs)


def validate(cfg: DataConfig) -> dict[str, list[ImageItem]]:
    """`read`, then every image of every split must exist and be readable: a data set is
    checked whole before the first run, not found broken an hour into training."""
    annotations, images = _folders(cfg)
    splits = read(cfg)
    paths = sorted({item.path for items in splits.values() for item in items})
    if tuple(paths) in _VALIDATED:
        return splits
    root = Path(cfg.root).expanduser().resolve()
    if outside := [(path, f"the file {path.resolve()}") for path in paths if not path.resolve().is_relative_to(root)]:
        print(
            f"petlbench: {len(outside)} of {len(paths)} images named in {annotations} lie outside data.root {root} "
            f"(an absolute path, `..` or a link): {_listed(outside)}",
            file=sys.stderr,
        )
    with ThreadPoolExecutor(max_workers=8) as pool:  # file reads: threads overlap the I/O
        checked = pool.map(_unreadable, paths, chunksize=64)
        reasons = list(tqdm(checked, total=len(paths), desc="checking images", unit="image", leave=False, disable=None))
    problems = [(path, why) for path, why in zip(paths, reasons, strict=True) if why]
    missing = [p for p in problems if p[1] == "missing"]
    if missing:
        raise ConfigError(f"{len(missing)} of {len(paths)} images named in {annotations} are missing from {images}: {_listed(missing)}")
    if problems:
        raise ConfigError(f"{len(problems)} of {len(paths)} images named in {annotations} cannot be read: {_listed(problems)}")
    _VALIDATED.add(tuple(paths))
    return splits


# --------------------------------------------------------------------------- loading


class Images(torch.utils.data.Dataset):
    """Item ``i``: image ``i`` as the model's pixel tensor (image processor in the worker)."""

    def __init__(self, items: list[ImageItem], image_processor):
        self.items, self.image_processor = items, image_processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.items[i].path) as image:
            return self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


class Pairs(Images):
    """Item ``(i, c)``: image ``i`` with its caption ``c`` (text, tokenised by `Collate`)."""

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, str]:
        i, c = key
        return super().__getitem__(i), self.items[i].captions[c]


@dataclass
class Collate:
    """Stacks images and tokenises captions (``tokenize(texts)``), in the worker."""

    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]

    def __call__(self, pairs: list[tuple[torch.Tensor, str]]) -> dict[str, torch.Tensor]:
        text = self.tokenize([caption for _, caption in pairs])
        return {
            "pixel_values": torch.stack([p for p, _ in pairs]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
        }


class PairSampler(torch.utils.data.Sampler):
    """The batches of a (image indices, caption indices) iterator as lists of pairs."""

    def __init__(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for idx, cap in self.batches:
            yield list(zip(idx.tolist(), cap.tolist(), strict=True))
