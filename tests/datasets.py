"""Small image-text data sets on disk, in the real formats, from the scene generator: the
same images and captions the embedded suite holds in memory (PNG is lossless)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from petlbench.data import scenes

SIZES = {"train": 24, "val": 6, "test": 10}


def _save(folder: Path, name: str, pixels) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)


def generated(sizes: dict[str, int] = SIZES, seed: int = 0) -> dict[str, scenes.SceneSplit]:
    """The embedded suite's splits at ``sizes`` (`DataConfig.seed` ``seed``)."""
    return scenes.target_splits(seed, sizes)


def write_karpathy(
    root: Path, coco: bool = False, sizes: dict[str, int] = SIZES, extra_caption: bool = True
) -> dict[str, scenes.SceneSplit]:
    """``root/dataset.json`` and ``root/images/``. ``coco``: COCO's layout (a ``filepath``
    per image; a third of the training images listed as ``restval``). ``extra_caption``:
    every test image gets a sixth caption, which must be dropped."""
    splits = generated(sizes)
    entries = []
    for split, data in splits.items():
        for i, (pixels, captions) in enumerate(zip(data.images, data.captions, strict=True)):
            name, sub = f"{split}-{i:04d}.png", ("val2014" if split != "train" else "train2014") if coco else ""
            _save(root / "images" / sub, name, pixels)
            kept = list(captions) + (["an extra sixth caption"] if extra_caption and split == "test" else [])
            listed = "restval" if coco and split == "train" and i % 3 == 0 else split
            entry = {"filename": name, "split": listed, "sentences": [{"raw": c, "tokens": c.split()} for c in kept]}
            if coco:
                entry["filepath"] = sub
            entries.append(entry)
    (root / "dataset.json").write_text(json.dumps({"images": entries, "dataset": "coco" if coco else "flickr30k"}))
    return splits


def write_jsonl(root: Path, sizes: dict[str, int] = SIZES) -> dict[str, scenes.SceneSplit]:
    """``root/manifest.jsonl`` and ``root/pictures/`` (nested folders)."""
    splits = generated(sizes)
    lines = []
    for split, data in splits.items():
        for i, (pixels, captions) in enumerate(zip(data.images, data.captions, strict=True)):
            _save(root / "pictures" / split, f"{i}.png", pixels)
            lines.append(json.dumps({"image": f"{split}/{i}.png", "captions": captions, "split": split}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return splits


def karpathy_args(root: Path) -> list[str]:
    """`--set` overrides pointing a suite at a `write_karpathy` folder."""
    return ["data.kind=karpathy", f"data.root={root}", "data.annotations=dataset.json", "data.images=images"]


def jsonl_args(root: Path) -> list[str]:
    return ["data.kind=jsonl", f"data.root={root}", "data.annotations=manifest.jsonl", "data.images=pictures"]
