"""`petlbench run --shard I/N`: a deterministic split of the (variant, seed) grid, shards run
as separate processes into one folder, and their records merge into the unsharded result."""

import csv
import dataclasses
import io
import json
import subprocess
import sys

import pytest

from petlbench import records
from petlbench.cli import main
from petlbench.plan import Shard, make_plan
from tests.conftest import tiny_args

GRID = ["--suite", "vl-retrieval", "--device", "cpu", "--methods", "linear,bitfit", "--seeds", "0,1", *tiny_args()]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return make_plan("vl-retrieval", ["linear", "bitfit", "lora"], [0, 1, 2], tmp_path_factory.mktemp("plan"), [])


def _names(runs):
    return [(variant.name, seed) for variant, seed in runs]


def test_shards_are_round_robin_over_the_grid_in_plan_order(plan):
    two = [_names(dataclasses.replace(plan, shard=Shard(i, 2)).runs()) for i in range(2)]
    assert two == [
        [("linear", 0), ("linear", 2), ("bitfit", 1), ("lora", 0), ("lora", 2)],
        [("linear", 1), ("bitfit", 0), ("bitfit", 2), ("lora", 1)],
    ]
    assert _names(dataclasses.replace(plan, shard=Shard(0, 1)).runs()) == _names(plan.runs()) == _names(plan.grid())


@pytest.mark.parametrize("count", [1, 2, 3, 4, 9, 10, 13])
def test_every_run_is_in_exactly_one_shard(plan, count):
    grid = _names(plan.grid())
    assert len(grid) == 9
    parts = [_names(dataclasses.replace(plan, shard=Shard(i, count)).runs()) for i in range(count)]
    assert sorted(run for part in parts for run in part) == sorted(grid)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced; a shard past the grid's end is empty
    assert all(part == [run for run in grid if run in part] for part in parts)  # each in grid order


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2/2", "2/2: expected 0 <= I < N, shards are 0-based (0/2 to 1/2)"),
        ("0/0", "0/0: the number of shards N must be at least 1"),
        ("1", "expected I/N such as 0/4 (shard I of N, 0-based), got '1'"),
        ("a/4", "expected I/N such as 0/4 (shard I of N, 0-based), got 'a/4'"),
        ("1/2/3", "expected I/N such as 0/4 (shard I of N, 0-based), got '1/2/3'"),
        ("1.0/2", "expected I/N such as 0/4 (shard I of N, 0-based), got '1.0/2'"),
        ("", "expected I/N such as 0/4 (shard I of N, 0-based), got ''"),
    ],
)
def test_a_bad_shard_is_a_usage_error(cli, capsys, tmp_path, value, message):
    with pytest.raises(SystemExit) as exc:
        cli("run", *GRID, "--output", str(tmp_path), "--shard", value)
    assert exc.value.code == 2
    assert f"argument --shard: {message}" in capsys.readouterr().err


def test_a_shard_needs_an_explicit_output_folder(cli):
    code, _, err = cli("run", *GRID, "--shard", "0/2")
    assert code == 2
    assert err.strip().splitlines() == [
        "petlbench: error: --shard 0/2: needs --output DIR, the one folder all shards write into "
        "(the default folder is named after each process's start time)"
    ]


def test_a_shard_past_the_end_of_the_grid_has_nothing_to_do(cli, tmp_path):
    code, out, _ = cli("run", *GRID, "--output", str(tmp_path / "out"), "--shard", "4/5")
    assert code == 0
    assert "shard 4/5: 0 of 4 runs" in out and "shard 4/5: nothing to do, the grid has 4 runs for 5 shards" in out
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Two shards as concurrent processes into one folder, one unsharded run (in this process) into another."""
    sharded, whole = tmp_path_factory.mktemp("sharded"), tmp_path_factory.mktemp("whole")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "petlbench.cli", "run", *GRID, "--output", str(sharded), "--shard", f"{i}/2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    shard_outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        shard_outs.append(out)
    assert main(["run", *GRID, "--output", str(whole)]) == 0
    return sharded, whole, shard_outs


def _figures(record):
    """What a run measured, less what depends on the clock (timestamps, times, speeds)."""
    run = {k: v for k, v in record["run"].items() if k != "finished"}
    cost = {k: record["cost"][k] for k in ("params_trainable", "params_total", "trainable_state_bytes", "memory")}
    return json.dumps([run, record["config"], record["trainable_rule"], record["metrics"], cost], sort_keys=True)


@pytest.mark.slow
def test_two_shards_give_the_records_of_one_unsharded_run(swept):
    sharded, whole, shard_outs = swept
    assert sorted(p.name for p in sharded.iterdir()) == [f"{v}--seed{s}.json" for v in ("bitfit", "linear") for s in (0, 1)] + [
        records.MANIFEST
    ]  # no lock and no temporary file left
    keys = {(r["run"]["variant"], r["run"]["seed"], r["run"]["run_hash"], r["run"]["status"]) for r in records.read_all(whole)}
    assert keys == {(r["run"]["variant"], r["run"]["seed"], r["run"]["run_hash"], r["run"]["status"]) for r in records.read_all(sharded)}
    assert {k[3] for k in keys} == {"ok"} and len(keys) == 4
    assert [_figures(r) for r in records.read_all(sharded)] == [_figures(r) for r in records.read_all(whole)]

    for i, out in enumerate(shard_outs):  # shard i holds seed i of both variants
        assert f"shard {i}/2: 2 of 4 runs on cpu" in out
        summary = [line.split()[:3] for line in out.splitlines() if line.startswith(("linear ", "bitfit "))]
        assert summary == [["bitfit", "bitfit", str(i)], ["linear", "linear", str(i)]]  # its own runs only
        assert f"once all 2 shards are done, merge them with `petlbench report {sharded}` and `petlbench plot {sharded}`" in out
    assert (whole / "report.md").exists()  # an unsharded run writes the report; no shard did (listing above)


# Report columns that do not depend on the clock: names, counts, parameters, memory, recalls.
DETERMINISTIC = ("variant", "method", "runs", "trainable", "peak", "R@", "rSum")


def _untimed_report(cli, folder):
    code, out, _ = cli("report", str(folder), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    return [{k: v for k, v in row.items() if any(word in k for word in DETERMINISTIC)} for row in rows]


@pytest.mark.slow
def test_report_over_the_shards_folder_equals_the_unsharded_report(cli, swept):
    sharded, whole, _ = swept
    merged = _untimed_report(cli, sharded)
    assert [(row["variant"], row["runs"]) for row in merged] == [("bitfit", "2 ok"), ("linear", "2 ok")]
    assert {"train peak (MiB, CPU accounting)", "eval peak (MiB)", "rSum", "rSum std"} <= set(merged[0])
    assert merged == _untimed_report(cli, whole)


@pytest.mark.slow
def test_a_rerun_shard_skips_its_done_records(cli, swept):
    sharded, _, _ = swept
    before = {p.name: p.read_text() for p in sharded.iterdir()}
    code, out, _ = cli("run", *GRID, "--output", str(sharded), "--shard", "1/2")
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("[")] == [
        f"[1/2] linear seed 1: already done, skipped ({sharded / 'linear--seed1.json'})",
        f"[2/2] bitfit seed 1: already done, skipped ({sharded / 'bitfit--seed1.json'})",
    ]
    assert {p.name: p.read_text() for p in sharded.iterdir()} == before
