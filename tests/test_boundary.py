"""The input boundary of `petlbench run`: every bad configuration value, YAML file, list
argument, output folder or model is exit 2 with one line naming the culprit, before anything
runs (no output folder appears)."""

import os
import shutil
import sys

import pytest
import torch
from transformers import CLIPModel

from petlbench.config import SEED_RANGE
from tests.conftest import tiny_args
from tests.test_estimate import tiny_config


def _refused(cli, tmp_path, *argv, fragments=(), methods="linear"):
    out = tmp_path / "out"
    code, stdout, err = cli(
        "run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(out), *(["--methods", methods] if methods else []), *argv
    )
    assert code == 2, (stdout, err)
    lines = [line for line in err.strip().splitlines() if line.startswith("petlbench")]
    assert len(lines) == 1 and lines[0].startswith("petlbench: error: ") and "Traceback" not in err, err
    assert len(lines[0]) < 600, "a message quotes a short prefix of the value, not all of it"
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists(), "nothing may run or be written"
    return err


# (override, what the message must say), each tried on its own with the tiny suite
BAD_VALUES = [
    ("method.lr=nan", "'nan' is not a finite number"),
    ("method.lr=.nan", "nan is not a finite number"),
    ("method.lr=inf", "'inf' is not a finite number"),
    ("method.lr=-.inf", "-inf is not a finite number"),
    ("method.lr=1e999", "'1e999' is not a finite number"),
    ("method.lr=-0.001", "-0.001 must be above 0"),
    ("method.lr=0", "0 must be above 0"),
    ("method.lr=", "'' is not a number"),
    ("method.lr=[1]", "[1] is not a number"),
    ("train.weight_decay=-1", "-1 must be at least 0"),
    ("train.weight_decay=nan", "not a finite number"),
    ("data.text_length=0", "0 must be at least 1"),
    ("data.text_length=-3", "-3 must be at least 1"),
    ("data.seed=-1", "-1 must be at least 0"),
    (f"data.seed={SEED_RANGE[1] + 1}", f"must be at most {SEED_RANGE[1]}"),
    ("data.seed=9223372036854775808", "beyond the 64-bit integer range"),
    ("train.warmup_steps=-1", "-1 must be at least 0"),
    ("train.batch_size=49", "49 exceeds the 48 images of the training split"),
    ("train.measure_steps=4", "4 measured steps do not fit after the warm-up step in train.steps = 4"),
    ("train.steps=1", "must be at least 2"),
    ("eval.batch_size=0", "must be at least 1"),
    ("name=", "'' must not be empty"),
    ("name= ", "None is not a string"),
    ("model.name=", "'' must not be empty"),
    ("seeds=[]", "needs at least 1 item"),
    ("seeds=[-1]", "item 0 (-1) must be at least 0"),
    ("train.precision=fp16", "one of 'fp32', 'bf16'"),
    ("train.grad_checkpointing=yes please", "is not true or false"),
    ("train.steps=3.5", "3.5 is not an integer"),
    ("train.steps=true", "True is not an integer"),
    ("data.kind=[scenes]", "is not one of"),
    ("train={steps: 3}", "missing required key 'train.batch_size'"),
    ("train.steps.x=3", "'train.steps' is not a section"),
    ("nope.x=1", "unknown key 'nope'"),
    ("=3", "expected key.path=value"),
    ("train..steps=3", "expected key.path=value"),
    ("method.lr=" + "9" * 5000, "is not a finite number"),
    ("data.target=near", "one of 'multi-object', 'shifted'"),
    ("data.shift.noise_std=20", "key 'data.shift': only for data.target shifted"),
    ("data.shift.background_low=-1", "-1 must be at least 0"),
    ("data.shift.contrast_low=2", "key 'data.shift.contrast_low': 2 exceeds data.shift.contrast_high = 1.1"),
    ("learning_rates={linear: -1}", "'linear': -1.0 must be above 0"),
    ("learning_rates={linear: .nan}", "key 'learning_rates.linear': nan is not a finite number"),
    ("learning_rates=[1]", "[1] is not a mapping of names to a number"),
    ("learning_rates={nosuch: 0.01}", "key 'learning_rates.nosuch': not a shipped variant; known: adapter"),
    ("learning_rates.linear=0.1", "'learning_rates' is not a section"),
]


@pytest.mark.parametrize("override, fragment", BAD_VALUES, ids=[v[0][:40] for v in BAD_VALUES])
def test_a_bad_value_is_refused_before_anything_runs(cli, tmp_path, override, fragment):
    _refused(cli, tmp_path, *tiny_args(override), fragments=(fragment,))


# Bounds that depend on the model: found by the plan's dry `prepare` on meta, naming the file and the --set.
MODEL_BOUNDS = [
    ("partial", "method.k=100", "k=100 must be between 1 and the tower depth 4"),
    ("lora", "method.r=0", "0 must be at least 1"),
    ("lora", "method.targets=[nope]", "targets ['nope'] must be a non-empty list of"),
    ("lora", "method.targets=[]", "needs at least 1 item"),
    ("lora", "method.dropout=1", "must be below 1"),
    ("adapter", "method.r=1000", "r=1000 must be between 1 and the block width 128"),
    ("lst", "method.r=3", "r=3 must divide the width 128"),
    ("lst", "method.drop_layers=[7]", "drop_layers=[7] must index the towers' layers (0..3)"),
    ("lst", "method.gate_temperature=0", "must be above 0"),
    ("lst", "method.fisher_batch_size=1", "fisher_batch_size=1 on a dual encoder, whose contrastive loss over one pair is constant"),
    ("unipt", "method.downsample=3", "downsample=3 must be a positive divisor of the embedding width 64"),
    ("prompt", "method.prompts=0", "must be at least 1"),
    ("lst", "method.fisher_batch_size=100", "its set-up reads batches of 100, more than the 48 images of the training split"),
]


@pytest.mark.parametrize("variant, override, fragment", MODEL_BOUNDS, ids=[f"{v}-{o}" for v, o, _ in MODEL_BOUNDS])
def test_a_value_the_model_cannot_take_is_refused_before_anything_runs(cli, tmp_path, variant, override, fragment):
    _refused(cli, tmp_path, *tiny_args(override), fragments=(fragment,), methods=variant)


def test_a_model_bound_names_the_file_and_the_override(cli, tmp_path):
    _refused(
        cli, tmp_path, *tiny_args("method.k=100"), fragments=("methods/partial.yaml with --set method.k=100: partial:",), methods="partial"
    )


BAD_LISTS = [
    (["--methods", ""], "--variants '': expected comma-separated names, none empty"),
    (["--methods", ","], "none empty"),
    (["--methods", "full,,linear"], "none empty"),
    (["--methods", "linear,linear"], "--variants: linear asked for twice"),
    (["--methods", "linear", "--seeds", "0,0"], "--seeds: 0 asked for twice"),
    (["--methods", "linear", "--seeds", "-1"], "--seeds: [-1] item 0 (-1) must be at least 0"),
    (["--methods", "linear", "--seeds", str(2**63)], "beyond the 64-bit integer range"),
    (["--methods", "x" * 10_000], "unknown method 'xxxxx"),
]


@pytest.mark.parametrize("argv, fragment", BAD_LISTS, ids=[" ".join(a)[:30] for a, _ in BAD_LISTS])
def test_a_bad_list_is_refused(cli, tmp_path, argv, fragment):
    _refused(cli, tmp_path, *argv, *tiny_args(), fragments=(fragment,), methods=None)


@pytest.mark.parametrize("text", ["", ",", "a", "0,a", "1.5"])
def test_seeds_that_do_not_parse_are_a_usage_error(cli, capsys, tmp_path, text):
    with pytest.raises(SystemExit) as exc:
        cli("run", "--suite", "vl-retrieval", "--seeds", text)
    assert exc.value.code == 2 and "argument --seeds: expected comma-separated integers" in capsys.readouterr().err


BILLION_LAUGHS = (
    "method: linear\nlr: 0.01\n"
    + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
)
BAD_YAML = [
    ("bomb", BILLION_LAUGHS.encode(), "line 4: alias *a: aliases are not allowed"),
    ("duplicate", b"method: linear\nlr: 0.01\nlr: 0.1\n", "line 3: duplicate key 'lr' (first on line 2)"),
    ("duplicate on one line", b"method: linear\nlr: 0.01\nx: {a: 1, a: 2}\n", "line 3: duplicate key 'a' (first on line 3)"),
    ("top-level list", b"- method: linear\n", "expected a mapping at the top level, got list"),
    ("top-level scalar", b"linear\n", "expected a mapping at the top level, got str"),
    ("empty", b"", "expected a mapping at the top level, got NoneType"),
    ("python tag", b"method: linear\nlr: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("not yaml", b"method: [linear\n", "not valid YAML"),
    ("not utf-8", b"method: linear\nlr: 0.01\n# \xff\xfe\n", "not UTF-8 text"),
    ("key not a string", b"method: linear\nlr: 0.01\n1: 2\n", "unknown key '1'"),
    ("unhashable key", b"method: linear\n? [a, b]\n: 1\n", "a key must be a plain value"),
    ("method not a name", b"method: [linear]\nlr: 0.01\n", "key 'method': ['linear'] is not a registered method name"),
    ("lr infinite", b"method: linear\nlr: .inf\n", "key 'lr': inf is not a finite number"),
    ("huge", b"method: linear\nlr: 0.01\n" + b"#" * (1 << 20), "larger than a config file can be"),
]


@pytest.mark.parametrize("name, content, fragment", BAD_YAML, ids=[n for n, _, _ in BAD_YAML])
def test_a_bad_method_file_is_refused(cli, tmp_path, name, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    _refused(cli, tmp_path, *tiny_args(), fragments=(str(path), fragment), methods=str(path))


def test_a_bad_suite_file_is_refused(cli, tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text("name: x\nversion: 1\nname: y\n")
    code, _, err = cli("run", "--suite", str(path), "--output", str(tmp_path / "out"))
    assert code == 2 and "line 3: duplicate key 'name' (first on line 1)" in err and not (tmp_path / "out").exists()


def test_an_unwritable_output_is_refused_before_anything_runs(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        code, _, err = cli("run", "--suite", "vl-retrieval", "--methods", "linear", "--output", str(out), *tiny_args())
        assert code == 2 and f"--output {out}" in err and ("not a folder" in err or "cannot be written" in err), err


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root may write a read-only folder")
def test_a_read_only_output_is_refused(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, _, err = cli("run", "--suite", "vl-retrieval", "--methods", "linear", "--output", str(locked / "out"), *tiny_args())
    assert code == 2 and "cannot be written" in err


def test_an_unsupported_method_asked_for_alone_is_refused(cli, tmp_path, monkeypatch):
    from tests.test_models import _vse_folder

    _vse_folder(tmp_path / "vse")
    _refused(
        cli,
        tmp_path,
        *tiny_args(f"model.name={tmp_path / 'vse'}"),
        fragments=("no variant asked for applies", "adapter"),
        methods="adapter",
    )


def test_dry_run_checks_everything_and_runs_nothing(cli, tmp_path):
    code, out, _ = cli(
        "run",
        "--suite",
        "vl-retrieval",
        "--methods",
        "linear,lora",
        "--seeds",
        "0,1",
        "--output",
        str(tmp_path / "out"),
        "--dry-run",
        *tiny_args(),
    )
    assert code == 0 and out.count("would run") == 4 and "dry run: everything checked, nothing run" in out
    assert not (tmp_path / "out").exists()
    _refused(cli, tmp_path, "--dry-run", *tiny_args("method.lr=nan"), fragments=("not a finite number",))


@pytest.fixture
def pickled_clip(tmp_path):
    """A checkpoint as older tools wrote it: config.json and a pickled pytorch_model.bin
    (and the shipped model's tokenizer, whose 48 tokens its 50 embeddings hold)."""
    from petlbench.models.resolve import resolve

    folder = tmp_path / "pickled"
    model = CLIPModel(tiny_config())
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(resolve("embedded-clip") / name, folder / name)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_are_refused_unless_allowed(pickled_clip):
    from petlbench.config import ConfigError
    from petlbench.models.loader import check_weights, load_backbone

    with pytest.raises(ConfigError, match="holds pickled weights only .*--set model.allow_pickle=true"):
        check_weights(str(pickled_clip), allow_pickle=False)
    with pytest.raises(ConfigError, match="pickled weights only"):
        load_backbone(str(pickled_clip), "sdpa", torch.device("cpu"))
    check_weights(str(pickled_clip), allow_pickle=True)
    saved = torch.load(pickled_clip / "pytorch_model.bin", weights_only=True)
    loaded = load_backbone(str(pickled_clip), "sdpa", torch.device("cpu"), allow_pickle=True).backbone.clip.state_dict()
    assert all(torch.equal(loaded[key], t) for key, t in saved.items())


def test_allow_pickle_is_not_in_the_suite_hash():
    from petlbench.config import load_suite, suite_hash

    assert suite_hash(load_suite("vl-retrieval")) == suite_hash(load_suite("vl-retrieval", ["model.allow_pickle=true"]))


@pytest.mark.slow
def test_no_traceback_reaches_the_user_for_a_bad_value(tmp_path):
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "petlbench.cli",
            "run",
            "--suite",
            "vl-retrieval",
            "--set",
            "method.lr=nan",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_shifted_target_must_leave_training_scenes(cli, tmp_path):
    _refused(cli, tmp_path, *tiny_args("data.target=shifted", "data.test_images=800", "data.val_images=64"),
             fragments=("800 test + 64 val images leave none of the 864 single-object scenes for training",))  # fmt: skip


def test_the_target_is_only_for_generated_scenes(cli, tmp_path):
    code, _, err = cli("run", "--suite", "vl-retrieval-flickr30k", "--output", str(tmp_path / "o"), "--set", "data.target=shifted")
    assert code == 2 and "key 'data.target': only for the generated scenes (data.kind scenes)" in err, err
