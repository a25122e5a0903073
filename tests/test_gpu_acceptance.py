"""`scripts/gpu_acceptance.sh` without a GPU: its steps, the checks it writes to
acceptance.json and the fixtures it measures, in the format the estimate's guard test reads
(`tests/test_estimate.py`). On the CPU the "measured" figure is the CPU accounting, which
the estimate must equal exactly."""

import json
import os
import subprocess

import pytest

from petlbench import records
from petlbench.config import PROJECT_ROOT
from petlbench.records import read_all
from tests.scripts import load_script
from tests.test_estimate import estimate_ratios


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory):
    out = tmp_path_factory.mktemp("acceptance")
    options = [
        "--device",
        "cpu",
        "--model",
        "embedded-clip",
        "--batch-size",
        "4",
        "--methods",
        "linear,lora",
        "--option-methods",
        "lora",
        "--deadline-s",
        "1200",
    ]
    done = subprocess.run(
        [str(PROJECT_ROOT / "scripts" / "gpu_acceptance.sh"), str(out), *options, "--jobs", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ""},
    )
    return out, done


@pytest.mark.slow
def test_the_script_is_executable_and_passes_its_cpu_plumbing(acceptance):
    out, done = acceptance
    assert os.access(PROJECT_ROOT / "scripts" / "gpu_acceptance.sh", os.X_OK)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "acceptance.json").read_text())
    assert summary["passed"] and summary["device"] == "cpu"
    assert [s["step"] for s in summary["steps"]] == ["fixture", "fixture-options", "e2e", "files", "oom"]
    assert "needs a GPU" in summary["steps"][-1]["skipped"]
    assert all(all(s["checks"].values()) for s in summary["steps"][:-1])
    assert (out / "log.txt").read_text().strip().splitlines()[-1].startswith("PASSED")


@pytest.mark.slow
def test_the_fixtures_are_what_the_guard_test_reads_and_the_estimate_equals_them(acceptance):
    out, _ = acceptance
    fp32 = json.loads((out / "fixtures" / "cuda_memory.json").read_text())
    options = json.loads((out / "fixtures" / "cuda_memory_options.json").read_text())
    assert [(m["method"], m["overrides"]) for m in options["measurements"]] == [
        ("lora", ["train.precision=bf16"]),
        ("lora", ["train.grad_checkpointing=true"]),
    ]
    for fixture in (fp32, options):
        ratios = estimate_ratios(fixture)
        assert len(ratios) == len(fixture["measurements"]) and set(ratios.values()) == {1.0}


@pytest.mark.slow
def test_the_two_shards_wrote_one_folder(acceptance):
    out, _ = acceptance
    found = read_all(out / "e2e")
    assert sorted((r["run"]["variant"], r["run"]["status"]) for r in found) == [("linear", "ok"), ("lora", "ok")]
    assert all(r["cost"]["attention_kernels"] for r in found)


def _script():
    return load_script("gpu_acceptance")


def test_a_fixture_that_is_missing_or_proves_nothing_fails_its_checks(tmp_path):
    script = _script()
    assert script.fixture_checks(tmp_path / "none.json") == ({"fixture written": False}, {})
    bf16_only = {
        "measurements": [
            {"method": "lora", "overrides": ["train.precision=bf16"], "status": "ok", "peak_bytes": 100, "estimate_bytes": 120}
        ]
    }
    (tmp_path / "bf16.json").write_text(json.dumps(bf16_only))
    checks, facts = script.fixture_checks(tmp_path / "bf16.json")
    assert not all(checks.values())  # no fp32 row: nothing validated
    assert facts["estimate_over_measured"] == {"lora train.precision=bf16": 1.2}
    assert all(script.fixture_checks(tmp_path / "bf16.json", fp32_rows=False)[0].values())  # reported, not checked
    oom = {"measurements": [{"method": "full", "overrides": [], "status": "oom"}]}
    (tmp_path / "oom.json").write_text(json.dumps(oom))
    assert not script.fixture_checks(tmp_path / "oom.json")[0]["every row measured (no oom, no error)"]


def test_a_folder_with_only_a_manifest_has_no_records(tmp_path):
    (tmp_path / records.MANIFEST).write_text("{}")
    assert _script().records_of(tmp_path) == {} and _script().records_of(tmp_path / "absent") == {}
