"""Short end-to-end runs of every method variant, result records, resume and failures."""

import json
import math

import pytest
import torch

from petlbench import config, isolation, records, train
from petlbench.methods import registered
from petlbench.tasks import get_task
from petlbench.variants import load_variant
from tests.conftest import tiny_args

# Every variant that applies to the suite's CLIP with its configuration (the T5 ones that a
# dual encoder refuses, such as a Fisher ranking of single examples, run in tests/test_t5_side.py).
SHIPPED = [p.stem for p in config.available("methods")]
VARIANTS = [name for name in SHIPPED if registered()[(v := load_variant(name)).method].unsupported_reason("clip", v.config) is None]
RETRIEVAL = get_task("retrieval")


def _run(cli, out_dir, *extra):
    return cli("run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(out_dir), *extra)


def test_every_registered_method_has_a_variant():
    assert {load_variant(v).method for v in VARIANTS} == set(registered())


# one variant in the fast tier; every one in the full run
@pytest.mark.parametrize("variant", [v if v == "linear" else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def test_short_end_to_end_run(cli, tmp_path, variant):
    code, out, err = _run(cli, tmp_path, "--methods", variant, *tiny_args())
    assert code == 0, err
    rec = json.loads(records.record_path(tmp_path, variant, 0).read_text())
    run = rec["run"]
    assert (run["variant"], run["method"], run["seed"], run["status"]) == (variant, load_variant(variant).method, 0, "ok")
    metrics = rec["metrics"]
    assert (metrics["task"], metrics["primary"]) == ("retrieval", "rsum")
    assert list(metrics["values"]) == [m.name for m in RETRIEVAL.metrics] and 0 <= metrics["values"]["rsum"] <= 600
    assert metrics["evaluated"] == {"images": 12, "captions": 60}  # TINY's test split, 5 captions each
    memory = rec["cost"]["memory"]
    assert memory["source"] == "cpu-accounting"
    assert memory["train_peak_bytes"] > memory["train_breakdown"]["parameters"] > 0
    assert memory["measured_steps"] == [1, 1] and rec["cost"]["timed_steps"] == [2, 3]
    assert 0 < rec["cost"]["params_trainable"] <= rec["cost"]["params_total"]
    assert {"git_commit", "dirty", "torch", "transformers", "peft", "device"} <= set(rec["env"])
    assert run["overrides"] == [a for a in tiny_args() if a != "--set"]
    assert variant in out and "train peak (MiB, CPU accounting)" in out


@pytest.mark.slow
def test_memory_figures_identical_run_to_run(cli, tmp_path):
    figures = []
    for name in ("a", "b"):
        assert _run(cli, tmp_path / name, "--methods", "partial", *tiny_args())[0] == 0
        rec = json.loads(records.record_path(tmp_path / name, "partial", 0).read_text())
        figures.append((rec["cost"]["memory"]["train_peak_bytes"], rec["cost"]["memory"]["eval_peak_bytes"], rec["metrics"]))
    assert figures[0] == figures[1]


@pytest.mark.slow
def test_resume_skips_finished_runs_and_refuses_another_config_in_the_folder(cli, tmp_path):
    path = records.record_path(tmp_path, "linear", 0)
    assert _run(cli, tmp_path, "--methods", "linear", *tiny_args())[0] == 0
    first = path.read_text()

    code, out, _ = _run(cli, tmp_path, "--methods", "linear", *tiny_args())
    assert code == 0 and "already done" in out
    assert path.read_text() == first

    # another configuration of the same (variant, seed) would overwrite this record: refused
    code, out, err = _run(cli, tmp_path, "--methods", "linear", *tiny_args("method.lr=0.05"))
    assert code == 2 and "linear--seed0 was planned with another method configuration (lr 0.03 vs 0.05" in err
    assert path.read_text() == first
    code, _, err = _run(cli, tmp_path, "--methods", "linear", *tiny_args("train.steps=5"))  # another suite configuration
    assert code == 2 and "differing in train.steps (4 vs 5)" in err
    assert path.read_text() == first

    changed = json.loads(first)
    changed["run"]["status"] = "error"  # a failed run is never skipped
    records.write_atomic(path, changed)
    code, out, _ = _run(cli, tmp_path, "--methods", "linear", *tiny_args())
    assert "already done" not in out and json.loads(path.read_text())["run"]["status"] == "ok"

    for field, other in (("device", "cuda"), ("torch", "0.0.1")):  # measured elsewhere: not this run's figure
        foreign = json.loads(path.read_text())
        foreign["env"][field] = other
        records.write_atomic(path, foreign)
        code, out, _ = _run(cli, tmp_path, "--methods", "linear", *tiny_args())
        assert "already done" not in out and json.loads(path.read_text())["env"][field] != other

    path.write_text('{"not": "a record"}')  # a foreign JSON file is named and run over, not a crash
    code, _, err = _run(cli, tmp_path, "--methods", "linear", *tiny_args())
    assert code == 0 and f"{path}: off-schema: schema None, not one of 1, 2, 3; it is run again" in err
    assert "1 unreadable records were run again (named above)" in err


def test_atomic_write_keeps_the_old_record_on_failure(tmp_path):
    path = tmp_path / "r.json"
    records.write_atomic(path, {"run": {"status": "ok"}})
    with pytest.raises(TypeError):
        records.write_atomic(path, {"run": {"status": object()}})
    assert json.loads(path.read_text()) == {"run": {"status": "ok"}}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


@pytest.mark.slow
def test_failing_run_is_recorded_and_the_sweep_goes_on(cli, tmp_path, monkeypatch):
    real_run = isolation.run

    def failing_for_partial(suite, variant, *args):
        if variant.name == "partial":
            raise RuntimeError("partial broke in a test")
        return real_run(suite, variant, *args)

    monkeypatch.setattr(isolation, "run", failing_for_partial)
    code, out, _ = _run(cli, tmp_path / "out", "--methods", "partial,linear", *tiny_args())
    assert code == 1
    failed = json.loads(records.record_path(tmp_path / "out", "partial", 0).read_text())
    assert failed["run"]["status"] == "error" and "partial broke in a test" in failed["run"]["error"]
    assert failed["metrics"] is None and failed["cost"] is None
    assert json.loads(records.record_path(tmp_path / "out", "linear", 0).read_text())["run"]["status"] == "ok"
    row = next(line.split() for line in out.splitlines() if line.startswith("partial "))
    assert row[3:] == ["error"] * 4  # the summary shows the status, never a zero


@pytest.mark.slow
def test_nan_loss_ends_the_run_as_diverged(cli, tmp_path, monkeypatch):
    task = get_task("retrieval").implementation
    real_loss = task.loss
    calls = []

    def loss_turning_nan(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(task, "loss", loss_turning_nan)
    code, out, _ = _run(cli, tmp_path, "--methods", "linear", *tiny_args())
    assert code == 0  # divergence is a result, not a failure
    rec = json.loads(records.record_path(tmp_path, "linear", 0).read_text())
    assert rec["run"]["status"] == "diverged" and "loss became nan" in rec["run"]["error"]
    row = next(line.split() for line in out.splitlines() if line.startswith("linear "))
    assert len(calls) == 3 and row[3:] == ["diverged"] * 4


def test_list_shows_suites_and_variants(cli):
    code, out, _ = cli("list")
    assert code == 0
    assert "vl-retrieval" in out
    for variant in VARIANTS:
        assert f"  {variant} " in out


def test_default_methods_are_one_variant_per_registered_method():
    from petlbench.plan import make_plan

    plan = make_plan("vl-retrieval", None, None, None, [])
    assert sorted(v.method for v in plan.variants) == sorted(registered())
    assert all(v.name == v.method for v in plan.variants)
    everything = make_plan("vl-retrieval", ["all"], None, None, [])
    assert [v.name for v in everything.variants] == SHIPPED
    assert sorted(everything.unsupported) == sorted(set(SHIPPED) - set(VARIANTS))  # each a record saying why


@pytest.mark.slow
def test_a_run_in_a_fresh_process_gives_the_same_record(tmp_path):
    """The CUDA path runs each (variant, seed) in a spawned process; on the CPU the exact
    figures must not depend on where the run happened."""
    from petlbench.plan import make_plan
    from petlbench.sweep import run_plan

    overrides = [a for a in tiny_args() if a != "--set"]
    here = run_plan(make_plan("vl-retrieval", ["lst"], [0], tmp_path / "here", overrides), torch.device("cpu"), isolate=False)
    fresh = run_plan(make_plan("vl-retrieval", ["lst"], [0], tmp_path / "fresh", overrides), torch.device("cpu"), isolate=True)
    for key in ("metrics", "trainable_rule"):
        assert fresh[0][key] == here[0][key]
    assert fresh[0]["cost"]["memory"]["train_peak_bytes"] == here[0]["cost"]["memory"]["train_peak_bytes"]
    assert fresh[0]["cost"]["params_trainable"] == here[0]["cost"]["params_trainable"]


@pytest.mark.slow
def test_training_brings_the_contrastive_loss_below_chance():
    """The learning test: a batch of 64 pairs at chance has InfoNCE loss log 64 = 4.16; the
    shipped model starts above it on the target scenes (5.0 zero-shot), and ten steps of full
    fine-tuning must bring it well below. A method that silently stops learning fails here,
    where the tiny CI sweep's few steps cannot tell."""
    suite = config.load_suite(
        "vl-retrieval", ["data.train_images=1024", "data.val_images=8", "data.test_images=8", "train.steps=10", "train.warmup_steps=2"]
    )
    losses = []
    train.run(suite, load_variant("full"), 0, torch.device("cpu"), losses.append)
    chance = math.log(suite.train.batch_size)
    assert len(losses) == 10 and losses[0] > chance
    assert max(losses[-3:]) < chance - 0.5, [round(loss, 2) for loss in losses]
