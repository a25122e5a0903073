"""No silent wrong result from how records lie on disk: a record read twice (the same
folder named twice, a folder and its subfolder, two copies of a sweep, a copy under another
file name) is one run, never two rows; `compare` refuses a folder with two records of one
run; a file whose name disagrees with its record, or JSON with a key twice, is named."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petlbench import records
from petlbench.config import ConfigError
from tests.conftest import default_sigint
from tests.test_report import make_record, markdown_tables, write


def _sweep(folder, peak_mib: int = 100):
    return write(folder, [make_record("linear", 0, peak=peak_mib * 2**20), make_record("lora", 0)])


def _runs(out: str) -> dict[str, str]:
    """variant -> the "runs" cell of the report's one table."""
    (table,) = markdown_tables(out)
    return {row["variant"]: row["runs"] for row in table}


@pytest.mark.parametrize("layout", ["same-folder-twice", "folder-and-subfolder", "two-copies", "renamed-copy"])
def test_a_record_read_twice_is_one_run(cli, tmp_path, layout):
    parent = tmp_path / "parent"
    sweep = _sweep(parent / "a")
    if layout == "same-folder-twice":
        args = [sweep, sweep]
    elif layout == "folder-and-subfolder":
        args = [parent, sweep]
    elif layout == "two-copies":
        shutil.copytree(sweep, parent / "b")
        args = [parent]
    else:
        shutil.copy(sweep / "linear--seed0.json", sweep / "linear--seed0 (copy).json")
        args = [sweep]
    code, out, err = cli("report", *map(str, args))
    assert code == 0, err
    assert _runs(out) == {"linear": "1 ok", "lora": "1 ok"}
    if layout in ("two-copies", "renamed-copy"):
        assert "hold the same run (linear seed 0" in err
        code, _, err = cli("report", *map(str, args), "--strict")
        assert code == 2 and "hold the same run (linear seed 0" in err


def test_the_copy_under_its_own_name_is_the_one_read(cli, tmp_path):
    sweep = _sweep(tmp_path / "a")
    other = make_record("linear", 0, peak=999 * 2**20)
    records.write_atomic(sweep / "a linear copy.json", other)
    code, out, err = cli("report", str(sweep))
    assert code == 0 and "only " + str(sweep / "linear--seed0.json") + " is read" in err
    assert "a linear copy.json: its file name is not its run's (linear--seed0.json)" in err
    (table,) = markdown_tables(out)
    assert {row["variant"]: row["train peak (MiB, CPU accounting)"] for row in table}["linear"] == "100.00"


def test_compare_refuses_a_folder_with_two_records_of_one_run(cli, tmp_path):
    """A regressed duplicate under another file name must not pass the memory gate."""
    baseline, current = _sweep(tmp_path / "baseline"), _sweep(tmp_path / "current")
    records.write_atomic(current / "linear-regressed.json", make_record("linear", 0, peak=500 * 2**20))
    code, out, err = cli("compare", str(baseline), str(current), "--tolerance", "0")
    assert code == 2 and "hold the same run (linear seed 0" in err and "linear-regressed.json" in err


def test_a_key_written_twice_makes_a_file_unreadable(tmp_path):
    path = tmp_path / "linear--seed0.json"
    text = json.dumps(make_record("linear"))
    path.write_text(text[:-1] + ', "schema": 3}')
    with pytest.raises(records.UnreadableRecord, match="key 'schema' twice"):
        records.read(path)


def test_a_link_to_a_record_is_the_record(cli, tmp_path):
    sweep = _sweep(tmp_path / "a")
    (sweep / "linear--seed1.json").symlink_to(sweep / "linear--seed0.json")
    code, out, err = cli("report", str(sweep), "--strict")
    assert code == 0 and _runs(out) == {"linear": "1 ok", "lora": "1 ok"}


@pytest.mark.slow
def test_shards_of_another_count_are_refused_and_report_names_the_runs_never_run(cli, tmp_path):
    """`--shard 0/2`, then `1/3` and `2/3` of the same grid: before, all exited 0 and one
    (variant, seed) was never run, unseen by `report`. The manifest pins the count."""
    from tests.conftest import tiny_args

    out = tmp_path / "out"
    grid = ["run", "--suite", "vl-retrieval", "--output", str(out), "--variants", "linear,bitfit", "--seeds", "0", *tiny_args()]
    assert cli(*grid, "--shard", "0/2")[0] == 0
    code, _, err = cli(*grid, "--shard", "1/3")
    assert code == 2 and "its shards split the grid into 2 parts, this shard is 1/3" in err
    code, out_text, err = cli("report", str(out))
    assert code == 0 and "1 run of its manifest has no record: bitfit--seed0" in err
    assert cli("report", str(out), "--strict")[0] == 1
    assert cli(*grid, "--shard", "1/2")[0] == 0
    code, _, err = cli("report", str(out), "--strict")
    assert code == 0 and "no record" not in err


MANIFEST_DAMAGE = {
    "suite_hash-missing": lambda m: m.pop("suite_hash"),
    "a-run-a-list": lambda m: m["runs"].update({next(iter(m["runs"])): ["not", "a", "run"]}),
    "run_hash-a-number": lambda m: next(iter(m["runs"].values())).update(run_hash=7),
    "shard_count-a-string": lambda m: m.update(shard_count="2"),
    "shard_grid-an-object": lambda m: m.update(shard_grid={"linear--seed0": 1}),
    "an-unknown-key": lambda m: m.update(extra=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", MANIFEST_DAMAGE)
def test_a_manifest_of_the_wrong_shape_is_named_not_a_traceback(cli, tmp_path, damage):
    """Before, a manifest with a key missing or of another type ended in a traceback."""
    from petlbench.records import MANIFEST
    from tests.conftest import tiny_args

    out = tmp_path / "out"
    grid = ["run", "--suite", "vl-retrieval", "--output", str(out), "--variants", "linear", "--seeds", "0", *tiny_args()]
    assert cli(*grid, "--shard", "0/2")[0] == 0
    manifest = json.loads((out / MANIFEST).read_text())
    MANIFEST_DAMAGE[damage](manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))
    for argv in (grid, [*grid, "--dry-run"]):
        code, _, err = cli(*argv)
        assert code == 2 and err.count("\n") == 1 and f"{out / MANIFEST}: not a petlbench manifest" in err, err
    code, _, err = cli("report", str(out))
    assert code == 0 and f"{out / MANIFEST}: not a petlbench manifest" in err, err


def _clip_copy(tmp_path, edit):
    """The shipped model copied, its weights file rewritten by ``edit(tensors)``."""
    from safetensors.torch import load_file, save_file

    from petlbench.models.resolve import resolve

    folder = tmp_path / "model"
    shutil.copytree(resolve("embedded-clip"), folder)
    tensors = load_file(folder / "model.safetensors")
    save_file(edit(tensors), folder / "model.safetensors")
    return folder


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda t: {"unrelated.weight": t["logit_scale"].clone()}, "142 weights the model needs are missing"),
        (lambda t: {k: v for k, v in t.items() if not k.startswith("text_model.")}, "weights the model needs are missing"),
        (lambda t: {**t, "extra_head.weight": t["logit_scale"].clone()}, "1 weight the model does not have: extra_head.weight"),
        (lambda t: {**t, "logit_scale": t["logit_scale"].repeat(2)}, "logit_scale (2,), the model's is ()"),
    ],
    ids=["none-of-its-keys", "a-tower-removed", "an-unexpected-key", "a-wrong-shape"],
)
def test_a_checkpoint_that_does_not_fill_the_model_is_refused_before_any_run(cli, tmp_path, edit, fragment):
    """Before, a checkpoint missing weights trained from random initialisation as `ok`."""
    from tests.conftest import tiny_args

    folder = _clip_copy(tmp_path, edit)
    for dry in (["--dry-run"], []):
        code, out, err = cli("run", "--suite", "vl-retrieval", "--variants", "linear", "--output", str(tmp_path / "out"),
                             *tiny_args(f"model.name={folder}"), *dry)  # fmt: skip
        assert code == 2 and fragment in err and str(folder / "model.safetensors") in err, err
        assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_the_record_says_which_weights_loaded(cli, tmp_path):
    """Before, nothing in a record named the checkpoint files a run trained from."""
    from tests.conftest import tiny_args

    folder = _clip_copy(tmp_path, lambda t: t)
    code, _, err = cli("run", "--suite", "vl-retrieval", "--variants", "linear", "--seeds", "0", "--output", str(tmp_path / "out"),
                       *tiny_args(f"model.name={folder}"))  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "linear--seed0.json").read_text())
    assert record["weights"] == {"folder": str(folder.resolve()), "files": [str((folder / "model.safetensors").resolve())], "new": []}


@settings(max_examples=40, deadline=None)
@given(
    runs=st.sets(st.tuples(st.sampled_from(["linear", "lora", "full"]), st.integers(0, 2)), min_size=1, max_size=6),
    layout=st.lists(st.sampled_from(["copy-file", "link-file", "copy-sweep", "nested-copy", "name-twice", "name-parent"]), max_size=4),
    strict=st.booleans(),
)
def test_the_run_count_is_the_number_of_distinct_runs_or_the_reader_refuses(runs, layout, strict):
    """Whatever copies, links and overlapping folders the layout holds, the reader gives
    one record per distinct (suite hash, variant, seed), or (strict) refuses."""
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "parent"
        sweep = write(parent / "sweep", [make_record(v, s) for v, s in sorted(runs)])
        first = sorted(sweep.glob("*.json"))[0]
        args = [sweep]
        for i, step in enumerate(layout):
            if step == "copy-file":
                shutil.copy(first, sweep / f"copy {i}.json")
            elif step == "link-file":
                (sweep / f"link {i}.json").symlink_to(first)
            elif step == "copy-sweep":
                shutil.copytree(sweep, parent / f"copy-{i}", symlinks=True)
                args = [parent]
            elif step == "nested-copy":
                shutil.copytree(sweep, sweep / f"sub-{i}", symlinks=True, ignore=shutil.ignore_patterns("sub-*"))
                args += [sweep / f"sub-{i}"]
            elif step == "name-twice":
                args += [args[0]]
            else:
                args += [parent]
        try:
            found = records.read_folders(args, strict=strict)
        except ConfigError:
            assert strict  # refusing is the strict reader's answer to copies
            return
        assert sorted((r["run"]["variant"], r["run"]["seed"]) for r in found) == sorted(runs)


def _petlbench(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    """The command line in a process of its own, stopped after 60 s: a read that blocks
    (a FIFO) must not hang the suite, it must fail the test."""
    return subprocess.run([sys.executable, "-m", "petlbench.cli", *argv], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_a_record_path_that_is_not_a_regular_file_is_named_not_read(tmp_path):
    sweep = _sweep(tmp_path / "a")
    os.mkfifo(sweep / "fifo--seed0.json")
    done = _petlbench("report", str(sweep))
    assert done.returncode == 0 and f"skipped {sweep / 'fifo--seed0.json'}: not a regular file" in done.stderr


@pytest.mark.slow
def test_a_suite_file_that_is_not_a_regular_file_is_exit_2(tmp_path):
    os.mkfifo(tmp_path / "suite.yaml")
    done = _petlbench("run", "--suite", str(tmp_path / "suite.yaml"), "--dry-run")
    assert done.returncode == 2 and done.stderr == f"petlbench: error: {tmp_path / 'suite.yaml'}: not a regular file\n"


def test_the_default_output_folder_stays_inside_results(tmp_path, monkeypatch):
    from petlbench.config import load_suite
    from petlbench.plan import default_output

    suite = tmp_path / "escape.yaml"
    suite.write_text(
        (Path(__file__).parent.parent / "suites" / "vl-retrieval.yaml").read_text().replace("name: vl-retrieval", "name: ../../escape")
    )
    monkeypatch.chdir(tmp_path)
    output = default_output(load_suite(str(suite)))
    assert output.resolve().is_relative_to((tmp_path / "results").resolve()) and output.parts[1] == "escape"


def test_a_usage_error_is_one_line(tmp_path):
    done = _petlbench("run", "--suite", "vl-retrieval", "--seeds", "x")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "argument --seeds: expected comma-separated integers" in done.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_an_estimate_stopped_by_a_signal_leaves_no_worker_behind(signum, code):
    """`estimate` forks a worker per core: stopped, it says so in one line and no worker
    outlives it (before, a SIGTERM left them running, holding the output pipe)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "petlbench.cli", "estimate", "--model", "clip-vit-base-patch32", "--batch-size", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while not (workers := parent.children()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers, "no worker started"
    time.sleep(1)  # the workers are estimating
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code and err.count("\n") == 1 and "interrupted by" in err, err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [p.pid for p in alive]


def test_a_figure_write_that_fails_leaves_no_partial_file(cli, tmp_path, monkeypatch):
    """Before, savefig wrote under the final name: a write cut short left a truncated PDF."""
    from matplotlib.figure import Figure

    sweep = _sweep(tmp_path / "a")
    assert cli("plot", str(sweep))[0] == 0
    before = {p.name: p.read_bytes() for p in sweep.glob("*.p[dn][fg]")}

    def cut_short(self, target, **kwargs):
        data = b"%PDF-1.4 half a figure"
        target.write(data) if hasattr(target, "write") else Path(target).write_bytes(data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", cut_short)
    code, _, err = cli("plot", str(sweep))
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert {p.name: p.read_bytes() for p in sweep.glob("*.p[dn][fg]")} == before
    assert not [p for p in sweep.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("command", ["plot", "estimate"])
def test_an_output_path_that_cannot_be_a_folder_is_refused_before_any_work(cli, tmp_path, command):
    sweep = _sweep(tmp_path / "a")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    if command == "plot":
        argv = ["plot", str(sweep), "--out", str(a_file)]
    else:
        argv = ["estimate", "--model", "embedded-clip", "--batch-size", "2", "--variants", "linear", "--output", str(a_file)]
    code, out, err = cli(*argv)
    option = "--out" if command == "plot" else "--output"
    assert code == 2 and err == f"petlbench: error: {option} {a_file}: exists and is not a folder\n" and out == "", err


def test_a_dry_run_refuses_the_output_folder_the_run_refuses(cli, tmp_path):
    """Before, the dry run judged an absent folder by its parent's permission bits and passed
    a folder that cannot be made; it now makes the folder as the run will, then removes it."""
    from tests.conftest import tiny_args

    for output in ["/proc/petlbench-out", "/sys/petlbench-out"]:  # kernel folders: no folder can be made in them
        for dry in (["--dry-run"], []):
            code, _, err = cli("run", "--suite", "vl-retrieval", "--variants", "linear", "--output", output, *tiny_args(), *dry)
            assert code == 2 and f"--output {output}: cannot be written" in err, err
    code, _, err = cli(
        "run", "--suite", "vl-retrieval", "--variants", "linear", "--output", str(tmp_path / "a" / "b"), *tiny_args(), "--dry-run"
    )
    assert code == 0 and not (tmp_path / "a").exists(), err


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_figures_are_written_is_one_line_and_leaves_whole_files(tmp_path, signum, code):
    """`plot` stopped between a figure's PNG and its PDF: before, SIGINT was a traceback and
    SIGTERM a silent death; now one line and 128 + the signal, every file whole."""
    sweep = _sweep(tmp_path / "a")
    env = {**os.environ, "PETLBENCH_FAULT": f"figure.png:{signal.Signals(signum).name}"}
    argv = [sys.executable, "-m", "petlbench.cli", "plot", str(sweep)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, preexec_fn=default_sigint)
    assert done.returncode == code and done.stderr == (
        f"petlbench: interrupted by {signal.Signals(signum).name} during the plots; "
        "each figure written is whole, the others were not written\n"
    ), done.stderr
    written = sorted(p.name for p in sweep.iterdir() if p.suffix in (".png", ".pdf") or p.name.startswith("."))
    assert len(written) == 1 and written[0].endswith(".png"), written


@pytest.mark.slow
def test_a_signal_in_the_report_phase_of_a_run_says_every_run_finished(tmp_path):
    from tests.conftest import tiny_args

    out = tmp_path / "out"
    env = {**os.environ, "PETLBENCH_FAULT": "figure.png:SIGTERM"}
    argv = ["run", "--suite", "vl-retrieval", "--variants", "linear", "--seeds", "0", "--output", str(out), *tiny_args()]
    done = subprocess.run([sys.executable, "-m", "petlbench.cli", *argv], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 143 and done.stderr.endswith(
        f"interrupted by SIGTERM while writing the report: every run finished, records in {out}; write it with "
        f"`petlbench report {out}` and `petlbench plot {out}`\n"
    ), done.stderr
    assert records.read(out / "linear--seed0.json")["run"]["status"] == "ok"
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]
