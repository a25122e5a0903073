"""Every model file checked before the first run: a corpus of malformed model folders
(configs of the wrong type, truncated, deeply nested, with sizes that are zero, negative,
absurd or of the wrong type; safetensors truncated, garbage, empty or with an impossible
header; a missing, broken or foreign tokenizer; a broken image processor), each of which
`run`, `run --dry-run` and `estimate` must refuse with exit 2 and one line naming the file,
before anything runs or any folder is made. Before, most of them ended in a traceback, and
a folder without tokenizer files trained `ok` on a tokenizer that maps every word to
<unk>."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from petlbench.models.resolve import resolve
from tests.conftest import tiny_args

CONFIG, WEIGHTS, TOKENIZER, PROCESSOR = "config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"


def _edit_config(*path: str, value):
    def edit(folder: Path) -> None:
        config = json.loads((folder / CONFIG).read_text())
        section = config
        for key in path[:-1]:
            section = section[key]
        section[path[-1]] = value
        (folder / CONFIG).write_text(json.dumps(config))

    return edit


def _write(name: str, content: str | bytes):
    def edit(folder: Path) -> None:
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return edit


def _truncate(name: str, size: int):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:size])


def _more_words(folder: Path) -> None:
    """A tokenizer of a larger vocabulary than the model embeds (ids past its embeddings)."""
    tokenizer = json.loads((folder / TOKENIZER).read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab.update({f"word{i}": len(vocab) + i for i in range(2)})
    (folder / TOKENIZER).write_text(json.dumps(tokenizer))


def _remove(*names: str):
    return lambda folder: [(folder / name).unlink() for name in names]


# case -> (how the shipped model's folder is broken, the file the error must name, whether
# `estimate` reads it: estimates need configs only, so weights and tokenizers are theirs to
# check only where the folder has them and they are broken)
CASES = {
    "config-truncated": (_truncate(CONFIG, 100), CONFIG, True),
    "config-a-list": (_write(CONFIG, "[1, 2]"), CONFIG, True),
    "config-deeply-nested": (_write(CONFIG, "[" * 100_000 + "]" * 100_000), CONFIG, True),
    "config-not-utf8": (_write(CONFIG, b'{"model_type": "clip\xff"}'), CONFIG, True),
    "size-zero": (_edit_config("vision_config", "hidden_size", value=0), CONFIG, True),
    "size-negative": (_edit_config("text_config", "num_hidden_layers", value=-1), CONFIG, True),
    "size-absurd": (_edit_config("vision_config", "hidden_size", value=10**12), CONFIG, True),
    "size-a-string": (_edit_config("text_config", "hidden_size", value="big"), CONFIG, True),
    "size-a-float": (_edit_config("vision_config", "num_attention_heads", value=2.5), CONFIG, True),
    "size-a-bool": (_edit_config("text_config", "vocab_size", value=True), CONFIG, True),
    "heads-not-dividing-the-width": (_edit_config("vision_config", "num_attention_heads", value=3), CONFIG, True),
    "patch-larger-than-the-image": (_edit_config("vision_config", "patch_size", value=96), CONFIG, True),
    "vocabulary-empty": (_edit_config("text_config", "vocab_size", value=0), CONFIG, True),
    "section-a-list": (_edit_config("vision_config", value=[1]), CONFIG, True),
    "weights-truncated": (_truncate(WEIGHTS, 5000), WEIGHTS, True),
    "weights-garbage": (_write(WEIGHTS, os.urandom(4096)), WEIGHTS, True),
    "weights-empty": (_write(WEIGHTS, b""), WEIGHTS, True),
    "weights-impossible-header": (_write(WEIGHTS, (2**60).to_bytes(8, "little") + b"{}"), WEIGHTS, True),
    "tokenizer-missing": (_remove(TOKENIZER, "tokenizer_config.json"), "no tokenizer files", False),
    "tokenizer-broken": (_write(TOKENIZER, "{not json"), TOKENIZER, False),
    "tokenizer-config-a-list": (_write("tokenizer_config.json", "[]"), "tokenizer", False),
    "tokenizer-larger-than-the-embeddings": (_more_words, "tokenizer", False),
    "processor-broken": (_write(PROCESSOR, "{broken"), PROCESSOR, False),
    "processor-wrong-types": (
        _write(PROCESSOR, '{"crop_size": "x", "size": -3, "image_processor_type": "CLIPImageProcessor"}'),
        PROCESSOR,
        False,
    ),
    "processor-another-image-size": (
        _write(PROCESSOR, '{"crop_size": 224, "size": 224, "image_processor_type": "CLIPImageProcessor"}'),
        PROCESSOR,
        False,
    ),
}


@pytest.fixture
def broken(tmp_path, request):
    edit, named, _ = CASES[request.param]
    folder = tmp_path / "model"
    shutil.copytree(resolve("embedded-clip"), folder)
    edit(folder)
    return folder, named


@pytest.mark.parametrize("broken", CASES, indirect=True)
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_run_refuses_a_malformed_model_folder_before_any_run(cli, tmp_path, broken, dry):
    folder, named = broken
    out = tmp_path / "out"
    argv = [
        "run",
        "--suite",
        "vl-retrieval",
        "--variants",
        "linear",
        "--seeds",
        "0",
        "--output",
        str(out),
        *tiny_args(f"model.name={folder}"),
    ]
    code, _, err = cli(*argv, *(["--dry-run"] if dry else []))
    assert code == 2 and err.count("\n") == 1 and str(folder) in err and named in err, err
    assert not out.exists()


@pytest.mark.parametrize("broken", [case for case, (_, _, estimated) in CASES.items() if estimated], indirect=True)
def test_estimate_refuses_a_malformed_model_folder(cli, broken):
    folder, named = broken
    code, _, err = cli("estimate", "--model", str(folder), "--batch-size", "2", "--variants", "linear")
    assert code == 2 and err.count("\n") == 1 and str(folder) in err and named in err, err


def test_the_corpus_breaks_a_folder_that_otherwise_runs(cli, tmp_path):
    """The control: the shipped model's folder, copied unbroken, passes every check."""
    folder = tmp_path / "model"
    shutil.copytree(resolve("embedded-clip"), folder)
    code, _, err = cli("run", "--suite", "vl-retrieval", "--variants", "linear", "--output", str(tmp_path / "out"),
                       *tiny_args(f"model.name={folder}"), "--dry-run")  # fmt: skip
    assert code == 0, err
    assert cli("estimate", "--model", str(folder), "--batch-size", "2", "--variants", "linear")[0] == 0
