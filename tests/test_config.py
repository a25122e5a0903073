"""Every configuration error stops the run with exit code 2 and a message naming the
source (file or --set), the key and what is allowed; no traceback."""

from pathlib import Path

import pytest
import yaml

from petlbench import config
from petlbench.methods import registered
from petlbench.variants import load_variant, shipped

SUITE = config.PROJECT_ROOT / "suites" / "vl-retrieval.yaml"


def _suite_file(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(SUITE.read_text())
    edit(data)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _expect_error(cli, argv, *fragments):
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_unknown_key_in_suite_file(cli, tmp_path):
    path = _suite_file(tmp_path, lambda d: d["train"].update(batchsize=3))
    _expect_error(cli, ["run", "--suite", str(path)], str(path), "unknown key 'train.batchsize'", "allowed keys: batch_size, steps")


def test_missing_required_key_in_suite_file(cli, tmp_path):
    path = _suite_file(tmp_path, lambda d: d["train"].pop("batch_size"))
    _expect_error(cli, ["run", "--suite", str(path)], str(path), "missing required key 'train.batch_size'", "an integer")


def test_wrong_type_in_suite_file(cli, tmp_path):
    path = _suite_file(tmp_path, lambda d: d["train"].update(steps="many"))
    _expect_error(cli, ["run", "--suite", str(path)], str(path), "key 'train.steps'", "'many' is not an integer")


def test_choice_outside_allowed_values(cli):
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--set", "train.optimizer_impl=fast"],
                  "--set train.optimizer_impl=fast", "one of 'foreach', 'for-loop', 'fused'")  # fmt: skip


def test_empty_split_is_rejected_before_anything_runs(cli):
    _expect_error(
        cli,
        ["run", "--suite", "vl-retrieval", "--set", "data.val_images=0"],
        "--set data.val_images=0: key 'data.val_images'",
        "at least 1 (0 means 'all' only for data read from files)",
    )


def test_range_error_in_the_suite_file_names_the_file(cli, tmp_path):
    path = _suite_file(tmp_path, lambda d: d["train"].update(steps=1))
    _expect_error(cli, ["run", "--suite", str(path)], f"{path}: key 'train.steps'", "at least 2")


def test_range_errors_are_caught_before_anything_runs(cli):
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--set", "train.steps=1"], "--set train.steps=1: key 'train.steps'", "at least 2")
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--set", "train.batch_size=0"], "key 'train.batch_size'", "at least 1")
    _expect_error(
        cli, ["run", "--suite", "vl-retrieval", "--set", "data.text_length=41"], "key 'data.text_length'", "exceeds the 40 text positions"
    )


def test_override_wrong_type_and_unknown_key(cli):
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--set", "train.steps=abc"], "--set train.steps=abc", "is not an integer")
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--set", "train.stepz=3"], "unknown key 'train.stepz'", "allowed keys:")
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--set", "train.steps"], "--set train.steps", "key.path=value")


def test_method_file_errors(cli, tmp_path):
    bad_key = tmp_path / "bad-key.yaml"
    bad_key.write_text("method: partial\nlr: 1.0e-3\ndepth: 2\n")
    _expect_error(
        cli, ["run", "--suite", "vl-retrieval", "--methods", str(bad_key)], str(bad_key), "unknown key 'depth'", "allowed keys: lr, k"
    )
    no_lr = tmp_path / "no-lr.yaml"
    no_lr.write_text("method: full\n")
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--methods", str(no_lr)], str(no_lr), "missing required key 'lr'")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("method: dora\nlr: 1\n")
    _expect_error(
        cli,
        ["run", "--suite", "vl-retrieval", "--methods", str(unknown)],
        str(unknown),
        "unknown method 'dora'",
        "registered: " + ", ".join(sorted(registered())),
    )
    _expect_error(
        cli, ["run", "--suite", "vl-retrieval", "--methods", "full", "--set", "method.k=2"], "--set method.k=2", "unknown key 'k'"
    )


def test_unknown_names(cli):
    _expect_error(cli, ["run", "--suite", "nope"], "unknown suite 'nope'", "glue-embedded, ", "vl-retrieval, vl-retrieval-coco")
    _expect_error(
        cli,
        ["run", "--suite", "vl-retrieval", "--methods", "nope"],
        "unknown method 'nope'",
        "known: " + ", ".join(sorted(shipped())),
    )
    _expect_error(cli, ["run", "--suite", "vl-retrieval", "--set", "model.name=/no/such/model"], "'/no/such/model'", "embedded-clip")


def test_float_spellings_and_override_recorded_types():
    variant = load_variant("full", ["method.lr=3e-4"])
    assert variant.config.lr == pytest.approx(3e-4)
    suite = config.load_suite("vl-retrieval", ["train.steps=7", "seeds=[1, 2]"])
    assert suite.train.steps == 7 and suite.seeds == [1, 2]


def test_hashes():
    base = config.load_suite("vl-retrieval")
    full = load_variant("full")
    # the seed list and description do not enter the suite hash; everything else does
    assert config.suite_hash(base) == config.suite_hash(config.load_suite("vl-retrieval", ["seeds=[5]", "description=x"]))
    assert config.suite_hash(base) != config.suite_hash(config.load_suite("vl-retrieval", ["train.batch_size=32"]))
    assert config.run_hash(base, full, 0) != config.run_hash(base, full, 1)
    assert config.run_hash(base, full, 0) != config.run_hash(base, load_variant("full", ["method.lr=1"]), 0)
    assert config.run_hash(base, full, 0) == config.run_hash(config.load_suite("vl-retrieval"), load_variant("full"), 0)


def test_a_suite_learning_rate_replaces_the_variant_files_and_a_set_wins():
    lrs = {"lora": 0.123}
    assert load_variant("lora", [], lrs).config.lr == 0.123
    assert load_variant("lora", ["method.lr=0.5"], lrs).config.lr == 0.5
    assert load_variant("adapter", [], lrs).config.lr == load_variant("adapter").config.lr == 0.03


def test_the_near_suite_learning_rates_reach_its_runs():
    from petlbench.plan import make_plan

    near = config.load_suite("vl-retrieval-near")
    assert set(near.learning_rates) == {v for v in shipped() if v in registered()}, "one rate per default variant"
    plan = make_plan("vl-retrieval-near", ["lora", "linear"], [0], None, [])
    assert [v.config.lr for v in plan.variants] == [near.learning_rates["lora"], near.learning_rates["linear"]]
    far = make_plan("vl-retrieval", ["lora"], [0], None, [])
    assert far.variants[0].config.lr == load_variant("lora").config.lr
