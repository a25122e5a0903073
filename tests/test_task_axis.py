"""The task axis, proved by a second task that lives with the tests (`tests/count_task.py`:
object counting from the image tower with a linear head, primary metric accuracy, a
lower-is-better eval loss beside it): `run`, `estimate` (equal to the CPU accounting, as
for retrieval), `report`, `plot` and `compare` serve it with no edit to petlbench; and
retrieval keeps every hash and figure it had."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from petlbench import config, records, schema
from petlbench.estimate import FakeTraining
from petlbench.models.loader import load_architecture
from petlbench.report import tables
from petlbench.tasks import get_task
from petlbench.variants import load_variant
from tests import count_task
from tests.conftest import tiny_args

SUITE = Path(__file__).parent / "count-objects.yaml"
METHODS = ("linear", "lora", "lst")  # a baseline, a method inside the backbone, a side network with a data-reading set-up


@pytest.fixture(scope="module")
def count_runs(tmp_path_factory):
    """One sweep of the counting task (its records and report written by `petlbench run`)."""
    from petlbench.cli import main

    out = tmp_path_factory.mktemp("count")
    assert main(["run", "--suite", str(SUITE), "--device", "cpu", "--methods", ",".join(METHODS), "--output", str(out)]) == 0
    return out, {m: json.loads(records.record_path(out, m, 0).read_text()) for m in METHODS}


@pytest.mark.slow
def test_a_run_of_another_task_records_its_metrics_and_trains_its_head(count_runs):
    _, recs = count_runs
    for rec in recs.values():
        assert rec["run"]["status"] == "ok", rec["run"]["error"]
        metrics = rec["metrics"]
        assert (metrics["task"], metrics["primary"]) == ("count-objects", "accuracy")
        assert set(metrics["values"]) == {"accuracy", "loss"} and metrics["evaluated"] == {"images": 12}
        # accuracy over 12 test scenes is a whole number of twelfths
        assert round(metrics["values"]["accuracy"] * 12 / 100, 9).is_integer()
        assert rec["trainable_rule"]["task_head"] == "trainable"
        assert rec["config"]["suite"]["task"] == "count-objects"
    # the linear probe trains what it trained for retrieval (the committed baseline, written
    # before tasks existed) and the head: an embed x 2 weight and 2 biases
    embed = load_architecture("embedded-clip").build("sdpa").embed_dim
    retrieval = json.loads((config.PROJECT_ROOT / "results" / "baselines" / "vl-retrieval-ci" / "linear--seed0.json").read_text())
    assert recs["linear"]["cost"]["params_trainable"] == retrieval["cost"]["params_trainable"] + embed * 2 + 2


@pytest.mark.slow
def test_the_estimate_of_another_task_equals_its_cpu_accounting(count_runs):
    """`FakeTraining` on the counting suite gives, byte for byte, the train and eval peaks
    that the real runs measured."""
    _, recs = count_runs
    suite = config.load_suite(str(SUITE))
    architecture = load_architecture("embedded-clip")
    for method, rec in recs.items():
        training = FakeTraining(architecture, suite, load_variant(method), target="cpu")
        memory = rec["cost"]["memory"]
        assert training.peak(suite.train.batch_size).peak_bytes == memory["train_peak_bytes"], method
        assert training.eval_peak(suite.eval.batch_size, suite.data.test_images).peak_bytes == memory["eval_peak_bytes"], method


@pytest.mark.slow
def test_the_estimate_command_serves_another_task(cli, count_runs, tmp_path):
    _, recs = count_runs
    code, out, err = cli(
        "estimate", "--model", "embedded-clip", "--suite", str(SUITE), "--methods", "linear", "--batch-size", "8", "--json"
    )
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["params_trainable"] == recs["linear"]["cost"]["params_trainable"]


@pytest.mark.slow
def test_report_plot_and_compare_read_the_task_s_metrics(cli, count_runs, tmp_path):
    folder, recs = count_runs
    code, out, err = cli("report", str(folder))
    assert code == 0, err
    assert "accuracy (%)" in out and "eval loss" in out and "rSum" not in out
    code, out, err = cli("report", str(folder), "--style", "paper", "--format", "md")
    assert code == 0 and "Object counting on count-objects v1" in out and "| accuracy (%) |" in out
    code, _, err = cli("plot", str(folder), "--out", str(tmp_path / "plots"))
    assert code == 0, err
    assert {"memory_vs_accuracy.png", "params_vs_accuracy.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}

    def with_scores(name: str, accuracy: float, loss: float) -> Path:
        for method, rec in recs.items():
            changed = copy.deepcopy(rec)
            if method == "lora":
                changed["metrics"]["values"].update(accuracy=accuracy, loss=loss)
            records.write_atomic(records.record_path(tmp_path / name, method, 0), changed)
        return tmp_path / name

    baseline = with_scores("baseline", 80.0, 0.5)
    code, out, _ = cli("compare", str(baseline), str(with_scores("worse", 40.0, 0.5)), "--metric-tolerance", "0.1")
    assert code == 1 and "FAIL: lora seed 0 (count-objects): accuracy (%) dropped -50.00% (tolerance 10.00%)" in out
    code, out, _ = cli("compare", str(baseline), str(with_scores("better", 88.0, 5.0)), "--metric-tolerance", "0.1")
    assert code == 0, out  # the primary metric rose; the loss, not primary, is not checked


def test_a_lower_is_better_metric_ranks_its_minimum_first():
    """The eval loss column's best value is its smallest, in the LaTeX table's bold."""
    rec = {
        "schema": schema.SCHEMA,
        "run": {"suite": "count-objects", "suite_version": 1, "suite_hash": "c", "run_hash": "r", "method": "linear"},
        "config": {"suite": {"task": "count-objects"}, "method": {}},
        "metrics": {"task": "count-objects", "primary": "accuracy", "values": {"accuracy": 50.0, "loss": 0.9}, "evaluated": {}},
        "cost": None,
    }
    low = copy.deepcopy(rec) | {"run": {**rec["run"], "variant": "low", "seed": 0, "status": "ok"}}
    high = copy.deepcopy(rec) | {"run": {**rec["run"], "variant": "high", "seed": 0, "status": "ok"}}
    high["metrics"]["values"].update(accuracy=60.0, loss=1.2)
    table = tables.build([low, high], figures=("metric.accuracy", "metric.loss"))  # columns of the record frame
    assert [c.header for c in table.columns] == ["accuracy (%)", "eval loss"]
    assert tables._best(table, 0) == {0} and tables._best(table, 1) == {1}  # rows sort by variant: high, low


def test_a_folder_mixing_tasks_reports_them_apart(cli, count_runs, tmp_path):
    folder, _ = count_runs
    code, _, err = cli("run", "--suite", "vl-retrieval", "--methods", "linear", "--output", str(tmp_path / "retrieval"), *tiny_args())
    assert code == 0, err
    code, out, err = cli("report", str(folder), str(tmp_path / "retrieval"))
    assert code == 0, err
    assert "### count-objects v1" in out and "### vl-retrieval v1" in out
    # one table per suite, each with its own task's columns only
    count_part, retrieval_part = (out.split("### count-objects")[1].split("###")[0], out.split("### vl-retrieval")[1].split("###")[0])
    assert "accuracy" in count_part and "rSum" not in count_part
    assert "rSum" in retrieval_part and "accuracy" not in retrieval_part


def test_an_unknown_task_is_one_line_naming_the_file_and_the_known_tasks(cli, tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text(SUITE.read_text().replace("task: count-objects", "task: counting"))
    code, out, err = cli("run", "--suite", str(suite), "--dry-run")
    assert code == 2 and err.count("\n") == 1
    assert f"{suite}: key 'task': unknown task 'counting'; registered: count-objects, glue, retrieval" in err


def test_the_task_key_at_its_default_leaves_the_suite_hash_as_it_was():
    """Every committed record's suite_hash, written before the task key existed, is what
    the declared hash rule gives its resolved suite today; naming the default task changes
    nothing, naming another one does."""
    baselines = sorted((config.PROJECT_ROOT / "results" / "baselines").rglob("*--seed*.json"))
    assert len(baselines) > 100
    for path in baselines:
        rec = json.loads(path.read_text())
        suite = config.build(config.SuiteConfig, rec["config"]["suite"], str(path))
        assert config.suite_hash(suite) == rec["run"]["suite_hash"], path
    suite = config.load_suite("vl-retrieval")
    assert config.suite_hash(dataclasses.replace(suite, task="retrieval")) == config.suite_hash(suite)
    assert config.suite_hash(dataclasses.replace(suite, task=count_task.NAME)) != config.suite_hash(suite)


def test_a_schema_2_record_reads_as_a_retrieval_record():
    """Schema 2's metrics (recalls and rSum as its own keys, fold means likewise) move under
    ``values``, with the task and its primary metric; written by hand, not by the reader."""
    recalls = {"i2t_r1": 1.0, "i2t_r5": 2.0, "i2t_r10": 3.0, "t2i_r1": 4.0, "t2i_r5": 5.0, "t2i_r10": 6.0, "rsum": 21.0}
    metrics = {**recalls, "images": 10, "captions": 50, "folds": {"count": 2, "images": 5, **recalls}}
    path = next(p for p in sorted((config.PROJECT_ROOT / "results" / "baselines").rglob("*--seed*.json")) if '"schema": 2' in p.read_text())
    rec = json.loads(path.read_text())
    assert rec["schema"] == 2
    upgraded = schema.check({**rec, "metrics": metrics})
    assert upgraded["schema"] == schema.SCHEMA == 3
    assert upgraded["metrics"] == {
        "task": "retrieval",
        "primary": "rsum",
        "values": recalls,
        "evaluated": {"images": 10, "captions": 50},
        "folds": {"count": 2, "evaluated": {"images": 5}, "values": recalls},
    }
    with pytest.raises(schema.OffSchema, match="metrics.t2i_r10 is missing"):
        schema.check({**rec, "metrics": {k: v for k, v in metrics.items() if k != "t2i_r10"}})


def test_the_counting_task_is_registered_from_the_tests_alone():
    """Nothing in petlbench names it: the package's own tasks are retrieval only."""
    assert get_task(count_task.NAME).module == "tests.count_task"
    assert not any("count" in p.name for p in (config.PROJECT_ROOT / "petlbench" / "tasks").iterdir())


def test_a_method_a_task_cannot_serve_is_unsupported_with_its_reason(cli, tmp_path, monkeypatch):
    """A task declares the methods it cannot serve: their runs are records with status
    unsupported and the reason, the estimate leaves them out and says so, the others run."""
    monkeypatch.setitem(count_task.SPEC.unsupported, "lora", "declared by a test")
    code, out, err = cli("run", "--suite", str(SUITE), "--device", "cpu", "--variants", "lora,linear", "--output", str(tmp_path))
    assert code == 0, err
    lora, linear = (json.loads(records.record_path(tmp_path, v, 0).read_text())["run"] for v in ("lora", "linear"))
    assert lora["status"] == "unsupported" and linear["status"] == "ok"
    assert lora["error"] == "method 'lora' does not serve the 'count-objects' task: declared by a test"
    code, out, err = cli("estimate", "--model", "embedded-clip", "--suite", str(SUITE), "--variants", "lora,linear", "--batch-size", "8")
    assert code == 0, err
    assert "Left out, their methods do not serve the task 'count-objects': lora." in out
