"""Data read from files (Karpathy JSON, JSONL): runs, counts, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from petlbench import config as cfgmod
from petlbench.data import files
from petlbench.data.retrieval import suite_splits
from petlbench.models.loader import load_backbone
from tests.conftest import tiny_args
from tests.datasets import SIZES, jsonl_args, karpathy_args, write_jsonl, write_karpathy

# Every split whole (0: all images), loaded in the main process unless a test says otherwise.
WHOLE = ["data.train_images=0", "data.val_images=0", "data.test_images=0", "data.workers=0"]


def _records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*--seed*.json")}


def _suite(overrides: list[str]) -> cfgmod.SuiteConfig:
    return cfgmod.load_suite("vl-retrieval", overrides)


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    write_karpathy(root, coco=True)
    return root


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jsonl")
    write_jsonl(root)
    return root


def test_karpathy_splits_restval_joins_training_and_extra_captions_are_dropped(karpathy):
    splits = files.read(_suite([*karpathy_args(karpathy), *WHOLE]).data)
    assert {name: len(items) for name, items in splits.items()} == SIZES  # restval counted in train
    assert all(len(item.captions) == 5 for items in splits.values() for item in items)
    assert "an extra sixth caption" not in {c for item in splits["test"] for c in item.captions}
    assert splits["train"][0].path == karpathy / "images" / "train2014" / "train-0000.png"


def test_sizes_cut_each_split_to_its_first_images(karpathy):
    splits = files.read(_suite([*karpathy_args(karpathy), *WHOLE, "data.test_images=4"]).data)
    whole = files.read(_suite([*karpathy_args(karpathy), *WHOLE]).data)
    assert splits["test"] == whole["test"][:4]


@pytest.mark.parametrize("fmt", ["karpathy", "jsonl"])
def test_files_give_the_in_memory_splits_exactly(fmt, karpathy, jsonl):
    """The generated scenes written as PNG and read back through the model's image
    processor and tokenizer equal the in-memory scenes: pixels, tokens and batches."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    on_disk = suite_splits(
        _suite([*(karpathy_args(karpathy) if fmt == "karpathy" else jsonl_args(jsonl)), *WHOLE]).data,
        loaded.tokenizer,
        loaded.image_processor,
    )
    sizes = [f"data.{split}_images={n}" for split, n in SIZES.items()]
    in_memory = suite_splits(_suite(sizes).data, loaded.tokenizer, None)
    for name in SIZES:
        a, b = on_disk[name], in_memory[name]
        assert (a.n_images, a.captions_per_image) == (b.n_images, b.captions_per_image)
        assert torch.equal(a.caption_tokens()[0], b.caption_tokens()[0])
        assert torch.equal(torch.cat(list(a.image_batches(7))), torch.cat(list(b.image_batches(7))))
    first = next(on_disk["train"].training_batches(8, torch.Generator().manual_seed(3)))
    second = next(in_memory["train"].training_batches(8, torch.Generator().manual_seed(3)))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_karpathy_run_evaluates_the_test_split_with_folds_and_matches_the_in_memory_run(cli, karpathy, tmp_path):
    """A run on files (two DataLoader workers) evaluates every test image and its five
    captions, reports the fold mean, and measures what the same data in memory measures."""
    code, out, err = cli("run", "--suite", "vl-retrieval", "--methods", "lora", "--output", str(tmp_path / "files"),
                         *tiny_args(*karpathy_args(karpathy), *WHOLE, "data.workers=2", "eval.folds=2"))  # fmt: skip
    assert code == 0, err
    record = _records(tmp_path / "files")["lora--seed0"]
    assert record["run"]["status"] == "ok", record["run"]["error"]
    metrics = record["metrics"]
    assert (metrics["images"], metrics["captions"]) == (SIZES["test"], 5 * SIZES["test"])
    assert metrics["folds"]["count"] == 2 and metrics["folds"]["images"] == SIZES["test"] // 2
    assert record["cost"]["data_workers"] == 2 and record["cost"]["data_wait_s_median"] >= 0

    sizes = [f"data.{split}_images={n}" for split, n in SIZES.items()]
    code, _, err = cli(
        "run", "--suite", "vl-retrieval", "--methods", "lora", "--output", str(tmp_path / "memory"), *tiny_args(*sizes, "eval.folds=2")
    )
    assert code == 0, err
    reference = _records(tmp_path / "memory")["lora--seed0"]
    assert record["cost"]["memory"]["train_peak_bytes"] == reference["cost"]["memory"]["train_peak_bytes"]
    assert record["cost"]["memory"]["eval_peak_bytes"] == reference["cost"]["memory"]["eval_peak_bytes"]
    assert metrics["rsum"] == pytest.approx(reference["metrics"]["rsum"], abs=1e-6)


def test_jsonl_run_counts(cli, jsonl, tmp_path):
    code, _, err = cli(
        "run",
        "--suite",
        "vl-retrieval",
        "--methods",
        "linear",
        "--output",
        str(tmp_path),
        *tiny_args(*jsonl_args(jsonl), *WHOLE, "eval.split=val"),
    )
    assert code == 0, err
    metrics = _records(tmp_path)["linear--seed0"]["metrics"]
    assert (metrics["images"], metrics["captions"]) == (SIZES["val"], 5 * SIZES["val"])
    assert "folds" not in metrics


def test_folds_must_divide_the_split(cli, karpathy, tmp_path):
    _expect_error(cli, tmp_path, [*karpathy_args(karpathy), "eval.folds=3"], "eval.folds", "10 images of the test split")


# --------------------------------------------------------------------------- bad input


def _broken(tmp_path: Path, fmt: str = "karpathy") -> Path:
    root = tmp_path / "data"
    (write_karpathy if fmt == "karpathy" else write_jsonl)(root, sizes={"train": 8, "val": 2, "test": 2})
    return root


def _expect_error(cli, tmp_path, args: list[str], *fragments: str) -> None:
    code, out, err = cli(
        "run", "--suite", "vl-retrieval", "--methods", "linear", "--output", str(tmp_path / "out"), *tiny_args(*WHOLE, *args)
    )
    assert code == 2, (out, err)
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_missing_root(cli, tmp_path):
    _expect_error(cli, tmp_path, karpathy_args(tmp_path / "nowhere"), "data.root", str(tmp_path / "nowhere"), "--set data.root=PATH")


def test_missing_annotation_file(cli, tmp_path):
    root = _broken(tmp_path)
    (root / "dataset.json").unlink()
    _expect_error(cli, tmp_path, karpathy_args(root), "data.annotations", str(root / "dataset.json"))


def test_missing_images_folder(cli, tmp_path):
    root = _broken(tmp_path)
    _expect_error(cli, tmp_path, [*karpathy_args(root), "data.images=imgs"], "data.images", str(root / "imgs"))


def test_missing_images_are_counted_and_the_first_named(cli, tmp_path):
    root = _broken(tmp_path)
    gone = sorted((root / "images").glob("train-*.png"))
    for path in gone:
        path.unlink()
    more = f"and {len(gone) - files.SHOWN} more"  # the first SHOWN are named
    _expect_error(cli, tmp_path, karpathy_args(root), f"{len(gone)} of 12 images", "are missing", str(gone[0]), more)


def test_corrupt_image(cli, tmp_path):
    root = _broken(tmp_path)
    bad = root / "images" / "val-0001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    _expect_error(cli, tmp_path, karpathy_args(root), "1 of 12 images", "cannot be read", str(bad))


def test_not_an_image(cli, tmp_path):
    root = _broken(tmp_path, "jsonl")
    bad = root / "pictures" / "test" / "0.png"
    bad.write_text("not an image")
    _expect_error(cli, tmp_path, jsonl_args(root), "cannot be read", str(bad))


def test_empty_split(cli, tmp_path):
    root = _broken(tmp_path)
    data = json.loads((root / "dataset.json").read_text())
    data["images"] = [e for e in data["images"] if e["split"] != "val"]
    (root / "dataset.json").write_text(json.dumps(data))
    _expect_error(cli, tmp_path, karpathy_args(root), str(root / "dataset.json"), "val split has no images")


def test_too_few_captions(cli, tmp_path):
    root = _broken(tmp_path)
    data = json.loads((root / "dataset.json").read_text())
    data["images"][3]["sentences"] = data["images"][3]["sentences"][:2]
    (root / "dataset.json").write_text(json.dumps(data))
    _expect_error(cli, tmp_path, karpathy_args(root), "images[3]", "2 captions", "data.captions_per_image")


@pytest.mark.parametrize(
    ("fmt", "text", "fragments"),
    [
        ("karpathy", "{not json", ("not valid JSON",)),
        ("karpathy", '{"images": [{"filename": "a.png", "sentences": []}]}', ("images[0]", "'split'")),
        ("karpathy", '{"images": [{"filename": "a.png", "split": "dev", "sentences": []}]}', ("split 'dev'", "restval")),
        ("jsonl", '{"image": "a.png", "captions": ["x"]}\n', ("manifest.jsonl:1", "'split'")),
        ("jsonl", '\n{"image": "a.png", "captions": "x", "split": "train"}\n', ("manifest.jsonl:2", "list of strings")),
    ],
)
def test_malformed_annotations(cli, tmp_path, fmt, text, fragments):
    root = _broken(tmp_path, fmt)
    (root / ("dataset.json" if fmt == "karpathy" else "manifest.jsonl")).write_text(text)
    _expect_error(cli, tmp_path, karpathy_args(root) if fmt == "karpathy" else jsonl_args(root), *fragments)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("data.root=", "data.root"),  # kind karpathy without a root
        ("data.train_images=-1", "data.train_images"),
        ("data.workers=-1", "data.workers"),
    ],
)
def test_data_config_errors(cli, tmp_path, override, fragment):
    _expect_error(cli, tmp_path, [*karpathy_args(tmp_path), override], fragment)


def test_files_keys_are_refused_for_scenes(cli, tmp_path):
    code, _, err = cli("run", "--suite", "vl-retrieval", "--output", str(tmp_path), *tiny_args(f"data.root={tmp_path}"))
    assert code == 2 and "data.root" in err and "karpathy or jsonl" in err


def test_where_the_data_lives_is_not_in_the_suite_hash(tmp_path):
    a = _suite([*karpathy_args(tmp_path / "a"), "data.workers=1"])
    b = _suite([*karpathy_args(tmp_path / "b"), "data.workers=8"])
    assert cfgmod.suite_hash(a) == cfgmod.suite_hash(b)
    assert cfgmod.suite_hash(a) != cfgmod.suite_hash(_suite([*karpathy_args(tmp_path / "a"), "data.test_images=5"]))
