"""Data read from files (Karpathy JSON, JSONL): runs, counts, validation errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from petlbench import config as cfgmod
from petlbench.data import files
from petlbench.models.loader import load_backbone
from petlbench.models.resolve import ASSETS
from petlbench.tasks.retrieval.data import suite_splits
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


@pytest.mark.slow
def test_karpathy_run_evaluates_the_test_split_with_folds_and_matches_the_in_memory_run(cli, karpathy, tmp_path):
    """A run on files (two DataLoader workers) evaluates every test image and its five
    captions, reports the fold mean, and measures what the same data in memory measures."""
    code, out, err = cli("run", "--suite", "vl-retrieval", "--methods", "lora", "--output", str(tmp_path / "files"),
                         *tiny_args(*karpathy_args(karpathy), *WHOLE, "data.workers=2", "eval.folds=2"))  # fmt: skip
    assert code == 0, err
    record = _records(tmp_path / "files")["lora--seed0"]
    assert record["run"]["status"] == "ok", record["run"]["error"]
    metrics = record["metrics"]
    assert metrics["evaluated"] == {"images": SIZES["test"], "captions": 5 * SIZES["test"]}
    assert metrics["folds"]["count"] == 2 and metrics["folds"]["evaluated"] == {"images": SIZES["test"] // 2}
    assert record["cost"]["data_workers"] == 2 and record["cost"]["data_wait_s_median"] >= 0

    sizes = [f"data.{split}_images={n}" for split, n in SIZES.items()]
    code, _, err = cli(
        "run", "--suite", "vl-retrieval", "--methods", "lora", "--output", str(tmp_path / "memory"), *tiny_args(*sizes, "eval.folds=2")
    )
    assert code == 0, err
    reference = _records(tmp_path / "memory")["lora--seed0"]
    assert record["cost"]["memory"]["train_peak_bytes"] == reference["cost"]["memory"]["train_peak_bytes"]
    assert record["cost"]["memory"]["eval_peak_bytes"] == reference["cost"]["memory"]["eval_peak_bytes"]
    assert metrics["values"]["rsum"] == pytest.approx(reference["metrics"]["values"]["rsum"], abs=1e-6)


@pytest.mark.slow
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
    assert metrics["evaluated"] == {"images": SIZES["val"], "captions": 5 * SIZES["val"]}
    assert metrics["folds"] is None


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


def test_truncated_jpeg(cli, tmp_path):
    """PIL's verify() passes a truncated JPEG; decoding it does not."""
    root = _broken(tmp_path, "jsonl")
    good, bad = root / "pictures" / "train" / "1.jpg", root / "pictures" / "train" / "0.jpg"
    Image.open(root / "pictures" / "train" / "0.png").convert("RGB").resize((256, 256)).save(good, quality=90)
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    manifest = root / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"train/0.png"', '"train/0.jpg"').replace('"train/1.png"', '"train/1.jpg"'))
    _expect_error(cli, tmp_path, jsonl_args(root), "1 of 12 images", "cannot be read", str(bad), "truncated")


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
        ("jsonl", '{"image": 7, "captions": ["x"], "split": "train"}\n', ("manifest.jsonl:1", "image must be a string, got 7")),
        (
            "jsonl",
            '{"image": "a.png", "captions": ["x", null], "split": "train"}\n',
            ("manifest.jsonl:1", "every caption must be a string"),
        ),
        ("karpathy", '{"images": [{"filename": 123, "split": "train", "sentences": []}]}', ("images[0]", "filename must be a string")),
        ("karpathy", '{"images": [{"filename": "a.png", "filepath": null, "split": "val", "sentences": []}]}', ("images[0]", "filepath")),
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


def test_annotations_that_are_not_utf8(cli, tmp_path):
    root = _broken(tmp_path, "jsonl")
    (root / "manifest.jsonl").write_bytes(b'{"image": "a.png", "captions": ["caf\xe9"], "split": "train"}\n')
    _expect_error(cli, tmp_path, jsonl_args(root), str(root / "manifest.jsonl"), "not UTF-8")


def test_a_model_without_image_processor_is_refused_before_any_run(cli, karpathy, tmp_path):
    """A checkpoint saved with save_pretrained alone has no image processor, which data
    read from files needs: an error before the sweep, not one per run."""
    model = tmp_path / "clip"
    shutil.copytree(ASSETS / "embedded-clip", model, ignore=shutil.ignore_patterns("preprocessor_config.json"))
    _expect_error(cli, tmp_path, [*karpathy_args(karpathy), f"model.name={model}"], "has no image processor", "preprocessor_config.json")


def test_loading_leaves_the_global_random_generator_alone(karpathy):
    """The run seed's generator draws initialisation and dropout: reading data from files
    must not advance it, or a file run would differ from the same data in memory."""
    loaded = load_backbone("embedded-clip", "sdpa", torch.device("cpu"))
    split = suite_splits(_suite([*karpathy_args(karpathy), *WHOLE, "data.workers=1"]).data, loaded.tokenizer, loaded.image_processor)[
        "train"
    ]
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    next(split.training_batches(4, torch.Generator().manual_seed(0)))
    list(split.image_batches(16))
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize(("override", "fragment"), [("data.root=x", "karpathy or jsonl"), ("data.captions_per_image=3", "5 captions")])
def test_files_keys_are_refused_for_scenes(cli, tmp_path, override, fragment):
    code, _, err = cli("run", "--suite", "vl-retrieval", "--output", str(tmp_path), *tiny_args(override))
    assert code == 2 and override.split("=")[0] in err and fragment in err, err


def test_where_the_data_lives_is_not_in_the_suite_hash(tmp_path):
    a = _suite([*karpathy_args(tmp_path / "a"), "data.workers=1"])
    b = _suite([*karpathy_args(tmp_path / "b"), "data.workers=8"])
    assert cfgmod.suite_hash(a) == cfgmod.suite_hash(b)
    assert cfgmod.suite_hash(a) != cfgmod.suite_hash(_suite([*karpathy_args(tmp_path / "a"), "data.test_images=5"]))


def _edited(tmp_path: Path, edit) -> list[str]:
    """`_broken`'s Karpathy folder with its annotation file changed by ``edit(data)``."""
    root = _broken(tmp_path)
    data = json.loads((root / "dataset.json").read_text())
    edit(data)
    (root / "dataset.json").write_text(json.dumps(data))
    return karpathy_args(root)


def _set_caption(data, image: int, text: str) -> None:
    data["images"][image]["sentences"][1]["raw"] = text


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda d: d["images"].append(dict(d["images"][0])), ("images[12]", "image test-0000.png is listed twice, first at images[0]")),
        (
            lambda d: d["images"].append({**d["images"][0], "split": "train"}),
            ("images[12]", "in two splits (test and train: test images would leak into training)"),
        ),
        (lambda d: _set_caption(d, 2, ""), ("images[2]", "caption 1 is empty or only whitespace")),
        (lambda d: _set_caption(d, 2, " \t\n"), ("images[2]", "caption 1 is empty or only whitespace")),
        (lambda d: _set_caption(d, 4, "a red \ud800 circle"), ("images[4]", "not valid UTF-8 text (a lone surrogate)")),
        (lambda d: d.update(images={"0": d["images"][0]}), ("expected a Karpathy-split JSON object with a list under 'images'",)),
        (lambda d: d.update(images=7), ("a list under 'images'",)),
        (lambda d: d["images"][1].update(split=["train"]), ("images[1]", "split must be a string, got ['train']")),
        (lambda d: d["images"].__setitem__(3, "train-0003.png"), ("images[3]", "is not an object with 'filename'")),
        (lambda d: d["images"][5].update(sentences="a caption"), ("images[5]", "'sentences' must be a list of objects with 'raw'")),
        (lambda d: d["images"][5].update(sentences=[{"tokens": []}]), ("images[5]", "'sentences' must be a list of objects with 'raw'")),
    ],
    ids=[
        "duplicate",
        "two-splits",
        "empty-caption",
        "blank-caption",
        "surrogate",
        "images-dict",
        "images-int",
        "split-list",
        "entry-str",
        "sentences-str",
        "no-raw",
    ],
)
def test_annotations_that_would_skew_the_metric_are_refused(cli, tmp_path, edit, fragments):
    _expect_error(cli, tmp_path, _edited(tmp_path, edit), *fragments)


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('["train/0.png", ["x"], "train"]', ("manifest.jsonl:13", "is not an object with 'image'")),
        ('{"image": "train/0.png", "captions": ["a", "b", "c", "d", "e"], "split": "train"}', ("manifest.jsonl:13", "listed twice")),
        (
            '{"image": "x.png", "captions": ["a", "b", "c", "d", "e"], "split": {"name": "val"}}',
            ("manifest.jsonl:13", "split must be a string"),
        ),
        ('{"image": "x.png", "captions": ["a", "", "c", "d", "e"], "split": "val"}', ("manifest.jsonl:13", "caption 1 is empty")),
        ("[" * 100_000 + "]" * 100_000, ("manifest.jsonl:13", "not valid JSON")),
    ],
    ids=["not-object", "duplicate", "split-object", "empty-caption", "deep"],
)
def test_a_bad_manifest_line_is_refused(cli, tmp_path, line, fragments):
    root = _broken(tmp_path, "jsonl")
    manifest = root / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + line + "\n")
    _expect_error(cli, tmp_path, jsonl_args(root), *fragments)


@pytest.mark.parametrize("alias", ["dotdot", "symlink"])
def test_a_test_image_that_is_a_training_image_by_another_path_is_leakage(cli, tmp_path, alias):
    """The same file reached through ``..`` or a symbolic link is the same image: listed in
    the test split after training lists it, it is leakage (exit 2), whatever its path says."""
    root = tmp_path / "data"
    write_jsonl(root)
    if alias == "symlink":
        (root / "pictures" / "test" / "link.png").symlink_to(root / "pictures" / "train" / "0.png")
        image = "test/link.png"
    else:
        image = "test/../train/0.png"
    manifest = root / "manifest.jsonl"
    entry = {"image": image, "captions": [f"caption {i}" for i in range(5)], "split": "test"}
    manifest.write_text(manifest.read_text() + json.dumps(entry) + "\n")
    _expect_error(cli, tmp_path, jsonl_args(root), "in two splits (train and test: test images would leak into training)", "train/0.png")


def test_an_image_outside_data_root_is_named(cli, tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_jsonl(root)
    elsewhere.mkdir()
    moved = elsewhere / "0.png"
    (root / "pictures" / "train" / "0.png").rename(moved)
    manifest = root / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"train/0.png"', json.dumps(str(moved))))
    code, _, err = cli("run", "--suite", "vl-retrieval", "--methods", "linear", "--dry-run", *tiny_args(*jsonl_args(root), *WHOLE))
    assert code == 0, err
    assert f"1 of {sum(SIZES.values())} images named in {manifest} lie outside data.root {root.resolve()}" in err and str(moved) in err
