"""Records that cannot be lost or mixed: one reader that names what it skips (report, plot,
compare, resume), records that are written whatever they hold, and `compare` that refuses
what it cannot judge."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from petlbench import records
from tests.test_report import make_record, write

GOOD = ["full", "linear"]


def _corrupt(folder):
    """One file per way a record can be broken, and the reason the reader must give."""
    good = make_record("lora")
    cases = {
        "truncated--seed0.json": (json.dumps(good)[:200], "not valid JSON"),
        "empty--seed0.json": ("", "not valid JSON"),
        "list--seed0.json": ("[]", "off-schema: a JSON list, not a record object"),
        "latin1--seed0.json": (b'{"schema": 1, "x": "\xff"}', "not UTF-8 text"),
        "deep--seed0.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "norun--seed0.json": (json.dumps({**good, "run": None}), "off-schema: run is NoneType, not an object"),
        "nan--seed0.json": (json.dumps(good).replace('"rsum": 120', '"rsum": NaN'), "non-finite number NaN"),
        "huge-number--seed0.json": (json.dumps(good).replace('"rsum": 120', '"rsum": 1e999'), "beyond the float range"),
        "nullmetrics--seed0.json": (json.dumps({**good, "metrics": None}), "off-schema: an ok run without metrics"),
        "nullmemory--seed0.json": (
            json.dumps({**good, "cost": {**good["cost"], "memory": None}}),
            "off-schema: cost.memory is NoneType, not an object",
        ),
        "schema--seed0.json": (json.dumps({**good, "schema": 99}), "off-schema: schema 99, not one of 1, 2"),
        "status--seed0.json": (
            json.dumps({**good, "run": {**good["run"], "status": "fine"}}),
            "off-schema: run.status 'fine' is not one of",
        ),
        "seed--seed0.json": (json.dumps({**good, "run": {**good["run"], "seed": "0"}}), "off-schema: run.seed is str, not int"),
    }
    for name, (content, _) in cases.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "folder--seed0.json").mkdir()
    return {**{name: why for name, (_, why) in cases.items()}, "folder--seed0.json": "a folder, not a file"}


@pytest.fixture
def mixed(tmp_path):
    folder = write(tmp_path / "mixed", [make_record(v) for v in GOOD])
    return folder, _corrupt(folder)


def test_the_reader_names_every_broken_file_with_its_reason(mixed):
    folder, expected = mixed
    loaded = records.load(folder)
    assert [r["run"]["variant"] for r in loaded.records] == GOOD
    found = {path.name: why for path, why in loaded.skipped}
    assert set(found) == set(expected)
    for name, why in expected.items():
        assert why in found[name], (name, found[name])


@pytest.mark.parametrize("command", ["report", "plot"])
def test_report_and_plot_skip_broken_files_by_name_and_strict_refuses(cli, mixed, command):
    folder, expected = mixed
    code, out, err = cli(command, str(folder))
    assert code == 0, err
    for name in expected:
        assert f"skipped {folder / name}: " in err
    assert f"{folder}: 2 records read, {len(expected)} files skipped" in err
    if command == "report":
        assert all(f"| {v} " in out for v in GOOD)
    code, _, err = cli(command, str(folder), "--strict")
    assert code == 2 and f"{len(expected)} files are not valid records (named above; --strict)" in err


def test_compare_reads_through_the_same_reader(cli, mixed, tmp_path):
    folder, expected = mixed
    baseline = write(tmp_path / "baseline", [make_record(v) for v in GOOD])
    code, out, err = cli("compare", str(baseline), str(folder))
    assert code == 0 and "OK: 2 records compared" in out and f"{len(expected)} files skipped" in err
    assert cli("compare", str(baseline), str(folder), "--strict")[0] == 2


def test_a_broken_current_record_of_an_ok_baseline_run_fails_the_comparison(cli, tmp_path):
    baseline = write(tmp_path / "baseline", [make_record("full")])
    current = tmp_path / "current"
    current.mkdir()
    (current / "full--seed0.json").write_text(json.dumps(make_record("full")).replace('"rsum": 120', '"rsum": NaN'))
    write(current, [make_record("linear")])
    code, out, _ = cli("compare", str(baseline), str(current))
    assert code == 1 and "full seed 0 (vl-retrieval) is missing from CURRENT" in out


def test_a_null_figure_in_current_fails_the_comparison(cli, tmp_path):
    baseline = write(tmp_path / "baseline", [make_record("full")])
    broken = make_record("full")
    broken["cost"]["memory"]["eval_peak_bytes"] = None
    current = write(tmp_path / "current", [broken])
    code, out, _ = cli("compare", str(baseline), str(current))
    assert code == 1 and "full seed 0 (vl-retrieval): eval peak (MiB) is None in CURRENT, where BASELINE has 50.00" in out


def test_compare_refuses_folders_of_different_suites(cli, tmp_path):
    other = make_record("full")
    other["run"]["suite"] = "vl-retrieval-near"
    baseline, current = write(tmp_path / "b", [make_record("full")]), write(tmp_path / "c", [other])
    code, _, err = cli("compare", str(baseline), str(current))
    assert code == 2 and "they hold the suites vl-retrieval (baseline) and vl-retrieval-near (current)" in err


def test_a_non_finite_metric_is_recorded_as_null_and_the_run_as_diverged(tmp_path):
    record = make_record("full")
    record["metrics"]["values"]["rsum"] = float("nan")
    record["metrics"]["values"]["i2t_r1"] = float("inf")
    written = records.write_record(tmp_path / "full--seed0.json", record)
    on_disk = json.loads((tmp_path / "full--seed0.json").read_text())
    assert on_disk == written and on_disk["metrics"]["values"]["rsum"] is None and on_disk["metrics"]["values"]["i2t_r1"] is None
    assert on_disk["run"]["status"] == "diverged"
    assert on_disk["run"]["error"] == "non-finite values, recorded as null: metrics.values.i2t_r1, metrics.values.rsum"


def test_a_non_finite_cost_makes_an_error_record(tmp_path):
    record = make_record("full")
    record["cost"]["step_time_s_median"] = float("inf")
    written = records.write_record(tmp_path / "r.json", record)
    assert (written["run"]["status"], written["cost"]["step_time_s_median"]) == ("error", None)


def test_a_record_json_cannot_hold_is_still_written_with_the_reason(tmp_path):
    record = make_record("full")
    record["cost"]["memory"]["train_breakdown"] = {"parameters": object()}
    written = records.write_record(tmp_path / "full--seed0.json", record)
    on_disk = json.loads((tmp_path / "full--seed0.json").read_text())
    assert on_disk == written and on_disk["run"]["status"] == "error" and on_disk["cost"] is None
    assert on_disk["run"]["error"].startswith("the record could not be written as it was: Object of type object is not JSON serializable")
    assert on_disk["run"]["variant"] == "full" and on_disk["config"]["suite"]["name"] == "vl-retrieval"


def test_a_full_disk_leaves_the_old_record_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "full--seed0.json"
    records.write_record(path, make_record("full"))
    before = path.read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(records.OutputError, match="cannot write .*full--seed0.json: No space left on device"):
        records.write_record(path, make_record("full", peak=1))
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["full--seed0.json"]


def test_records_are_readable_like_any_file_the_user_writes(tmp_path):
    old = os.umask(0o022)
    try:
        records.write_atomic(tmp_path / "r.json", make_record("full"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_finite_replaces_every_non_finite_number_and_says_where():
    clean, where = records.finite({"a": [1.0, float("nan"), {"b": float("-inf")}], "c": 2, "d": None})
    assert clean == {"a": [1.0, None, {"b": None}], "c": 2, "d": None}
    assert where == ["a[1]", "a[2].b"]
