"""The near-transfer suite (vl-retrieval-near) measures the memory of the far one
(vl-retrieval): same model, batch, text length and evaluation, so the CI memory baseline
of the far suite covers both and only accuracy differs."""

import json

import pytest

from petlbench.config import load_suite, suite_hash, to_dict
from tests.conftest import tiny_args
from tests.scripts import load_script


def test_the_two_suites_differ_only_in_their_data_and_learning_rates():
    far, near = load_suite("vl-retrieval"), load_suite("vl-retrieval-near")
    assert to_dict(far.model) == to_dict(near.model) and to_dict(far.train) == to_dict(near.train)
    assert to_dict(far.eval) == to_dict(near.eval) and far.data.text_length == near.data.text_length
    assert (far.data.target, near.data.target) == ("multi-object", "shifted")
    assert suite_hash(far) != suite_hash(near)


@pytest.mark.slow
def test_the_near_suite_measures_the_far_suites_memory_to_the_byte(cli, tmp_path):
    memory = {}
    for suite in ("vl-retrieval", "vl-retrieval-near"):
        out = tmp_path / suite
        code, _, err = cli("run", "--suite", suite, "--methods", "full,unipt", "--device", "cpu", "--output", str(out), *tiny_args())
        assert code == 0, err
        memory[suite] = {p.name: json.loads(p.read_text())["cost"]["memory"] for p in sorted(out.glob("*--seed0.json"))}
    far, near = memory["vl-retrieval"], memory["vl-retrieval-near"]
    assert far.keys() == near.keys() == {"full--seed0.json", "unipt--seed0.json"}
    for name in far:
        for key in ("train_peak_bytes", "eval_peak_bytes", "train_breakdown"):
            assert near[name][key] == far[name][key], (name, key)
    assert far["full--seed0.json"]["train_peak_bytes"] > far["unipt--seed0.json"]["train_peak_bytes"]


def test_an_lr_sweep_replaces_its_own_suites_section_and_keeps_the_others(tmp_path):
    table = tmp_path / "lr.md"
    table.write_text("# Learning-rate sweeps\n\nintro\n\n## vl-retrieval\n\nfar table\n\n## other\n\nother table\n")
    write_section = load_script("lr_sweep").write_section
    write_section(table, "vl-retrieval", ["new far table"])
    write_section(table, "vl-retrieval-near", ["near table"])
    assert table.read_text() == (
        "# Learning-rate sweeps\n\nintro\n\n## vl-retrieval\n\nnew far table\n\n## other\n\nother table\n\n"
        "## vl-retrieval-near\n\nnear table\n"
    )
