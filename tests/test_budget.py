"""Memory-budget runs (`run --budget`): the batch choice against a brute-force search with
the estimate, the schedule's arithmetic, the hashes, resume, `over_budget`, and one tiny
budget sweep whose measured CPU peaks must stay within the budget for every method."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petlbench import budget as budgeting
from petlbench import config as cfgmod
from petlbench import records
from petlbench.cli import main
from petlbench.config import ConfigError, load_suite
from petlbench.estimate import FakeTraining
from petlbench.models.loader import load_architecture
from petlbench.report.plots import write_plots
from petlbench.report.tables import report
from petlbench.variants import load_variant
from tests.conftest import TINY, tiny_args

ARCHITECTURE = load_architecture("embedded-clip")
MiB = 2**20
N_TRAIN, N_EVAL = 48, 12  # conftest.TINY's splits: train 48, test 12
SWEPT = ("full", "linear", "lora", "unipt", "prompt", "dtl")  # baselines, backward through the backbone, side networks
BASELINE = Path(__file__).parent.parent / "results" / "baselines" / "vl-retrieval-ci"


def mib(n: float) -> str:
    return f"budget.bytes={int(n * MiB)}"


def tiny_suite(*extra: str):
    return load_suite("vl-retrieval", [*TINY, *extra])


def brute_force(suite, method: str) -> tuple[int | None, int | None, bool | None]:
    """(training batch, evaluation batch, checkpointing) from an exhaustive search with
    fresh estimates: every multiple of the batch rule from the minimum, checkpointing on and
    off where it is a knob (off on a tie); the evaluation batch halved from the suite's
    until it fits."""
    rules, variant = suite.budget, load_variant(method)
    best = (0, False)
    for checkpointing in [False, True] if "grad_checkpointing" in rules.knobs else [False]:
        train = dataclasses.replace(suite.train, grad_checkpointing=checkpointing)
        training = FakeTraining(ARCHITECTURE, suite, variant, "cpu", train)
        for batch in range(rules.batch_multiple, min(rules.max_batch_size, N_TRAIN) + 1, rules.batch_multiple):
            if batch >= rules.min_batch_size and training.peak(batch).peak_bytes <= rules.bytes and batch > best[0]:
                best = (batch, checkpointing)
    if not best[0]:
        return None, None, None
    training = FakeTraining(ARCHITECTURE, suite, variant, "cpu")
    eval_batch = suite.eval.batch_size
    while training.eval_peak(eval_batch, N_EVAL).peak_bytes > rules.bytes:
        eval_batch //= 2
        if eval_batch == 0:
            return None, None, None
    return best[0], eval_batch, best[1]


def choose(suite, method: str, target: str = "cpu"):
    return budgeting.choose(budgeting.Estimates(ARCHITECTURE, suite, load_variant(method), target), suite, N_TRAIN, N_EVAL)


@pytest.mark.parametrize(
    "method, extra",
    [
        ("full", [mib(70)]),  # between batches: full fits at 8 and 16, not at 24
        ("full", [mib(40)]),  # not even at the minimum: over budget
        ("lora", [mib(45), "budget.batch_multiple=4", "budget.min_batch_size=4"]),
        ("unipt", [mib(25)]),
        ("full", [mib(50), "budget.knobs=[batch, grad_checkpointing]"]),  # checkpointing buys a larger batch than 8
        ("linear", [mib(13)]),  # the evaluation batch must shrink
    ],
)
@pytest.mark.slow
def test_the_choice_equals_a_brute_force_search(method, extra):
    suite = tiny_suite(*extra)
    choice = choose(suite, method)
    assert (choice.batch_size, choice.eval_batch_size, choice.grad_checkpointing) == brute_force(suite, method)
    if choice.batch_size is not None:
        assert choice.estimated_train_peak_bytes <= suite.budget.bytes and choice.estimated_eval_peak_bytes <= suite.budget.bytes
    else:
        assert choice.reason and choice.estimated_train_peak_bytes > suite.budget.bytes


@pytest.mark.slow
def test_the_cases_above_cover_what_they_claim():
    """The budgets of the brute-force cases sit where their comments say (so that those
    cases test the boundaries, not only a trivial fit)."""
    assert choose(tiny_suite(mib(70)), "full").batch_size == 16
    plain, gc_full = (choose(tiny_suite(mib(50), *extra), "full") for extra in ([], ["budget.knobs=[batch, grad_checkpointing]"]))
    assert plain.batch_size == 8 and not plain.grad_checkpointing and gc_full.grad_checkpointing and gc_full.batch_size > 8
    assert choose(tiny_suite(mib(40)), "full").batch_size is None
    assert choose(tiny_suite(mib(13)), "linear").eval_batch_size < 32


@given(
    steps=st.integers(2, 10_000),
    batch=st.integers(1, 4096),
    warmup=st.integers(0, 10_000),
    chosen=st.integers(1, 4096),
    measure=st.integers(1, 4),
)
def test_equal_samples_sees_the_suite_samples_to_within_half_a_batch(steps, batch, warmup, chosen, measure):
    measure = min(measure, steps - 1)
    suite = load_suite(
        "vl-retrieval",
        [f"train.steps={steps}", f"train.batch_size={batch}", f"train.warmup_steps={warmup}", f"train.measure_steps={measure}"],
    )
    got_steps, got_warmup = budgeting.schedule(suite, chosen)
    exact = Fraction(steps * batch, chosen)
    if got_steps > measure + 2:
        assert abs(got_steps * chosen - steps * batch) * 2 <= chosen  # within half a batch
        assert got_steps == math.floor(exact + Fraction(1, 2))
    else:
        assert got_steps == measure + 2 and exact < measure + 2 + Fraction(1, 2)
    assert got_warmup == math.ceil(Fraction(warmup * got_steps, steps))


def test_equal_steps_keeps_the_suite_steps_and_lr_scaling():
    suite = tiny_suite("budget.schedule=equal_steps", "budget.lr_scaling=sqrt")
    assert budgeting.schedule(suite, 32) == (suite.train.steps, suite.train.warmup_steps)
    lr = load_variant("full").config.lr
    assert budgeting.scaled_lr(suite, lr, 32) == pytest.approx(lr * 2)  # 32 / 8 = 4
    linear = tiny_suite("budget.lr_scaling=linear")
    assert budgeting.scaled_lr(linear, lr, 32) == pytest.approx(lr * 4)


def test_without_a_budget_every_hash_is_what_it_was():
    """The CI baseline records were written before budgets existed: their suite and run
    hashes are the golden values."""
    ci = load_suite(
        "vl-retrieval",
        [
            "data.train_images=64",
            "data.val_images=16",
            "data.test_images=32",
            "train.batch_size=16",
            "train.steps=4",
            "train.warmup_steps=1",
            "train.measure_steps=2",
        ],
    )
    for path in sorted(BASELINE.glob("*--seed0.json")):
        record = json.loads(path.read_text())
        assert cfgmod.suite_hash(ci) == record["run"]["suite_hash"]
        assert cfgmod.run_hash(ci, load_variant(record["run"]["variant"]), 0) == record["run"]["run_hash"]


def test_a_budget_and_each_of_its_rules_enter_the_hashes():
    plain, variant = tiny_suite(), load_variant("linear")
    budgeted = [
        tiny_suite(mib(40)),
        tiny_suite(mib(80)),
        tiny_suite(mib(40), "budget.batch_multiple=4"),
        tiny_suite(mib(40), "budget.schedule=equal_steps"),
    ]
    assert len({cfgmod.suite_hash(s) for s in [plain, *budgeted]}) == 5
    assert len({cfgmod.run_hash(s, variant, 0) for s in [plain, *budgeted]}) == 5
    # rules alone, without a budget, change nothing
    assert cfgmod.suite_hash(tiny_suite("budget.batch_multiple=4")) == cfgmod.suite_hash(plain)


@pytest.mark.parametrize(
    "override, message",
    [
        ("budget.min_batch_size=64", "exceeds budget.max_batch_size"),
        ("budget.knobs=[grad_checkpointing]", "must include 'batch'"),
        ("budget.knobs=[batch, batch]", "named twice"),
        ("budget.schedule=equal_time", "one of 'equal_samples', 'equal_steps'"),
        ("budget.batch_multiple=0", "at least 1"),
    ],
)
def test_bad_budget_rules_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_suite("vl-retrieval", ["budget.max_batch_size=32", override])
    assert override.split("=")[0] in str(caught.value)


@pytest.mark.parametrize("text, message", [("24GB", "not a memory size"), ("40MiB,40MiB", "named twice"), ("40MiB,", "not a memory size")])
def test_bad_budgets_are_refused(capsys, text, message):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--suite", "vl-retrieval", "--budget", text])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_cuda_target_keeps_the_headroom_and_is_unvalidated():
    """The CUDA estimate holds 66 MiB of cuBLAS workspaces: 100 MiB less 20 MiB of headroom leaves room for batch 8."""
    cpu = choose(tiny_suite(mib(100)), "unipt")
    cuda = choose(tiny_suite(mib(100), f"budget.cuda_headroom_bytes={20 * MiB}"), "unipt", "cuda")
    assert cuda.headroom_bytes == 20 * MiB and cuda.batch_size is not None and cuda.estimated_train_peak_bytes <= 80 * MiB
    looser = choose(tiny_suite(mib(100), "budget.cuda_headroom_bytes=0"), "unipt", "cuda")
    assert cuda.batch_size < looser.batch_size  # the headroom costs batch
    assert cuda.validated is False and any("GPU" in why for why in cuda.unvalidated) and cpu.validated and cpu.unvalidated == []
    small = choose(tiny_suite(mib(60), f"budget.cuda_headroom_bytes={60 * MiB}"), "unipt", "cuda")
    assert small.batch_size is None and "headroom" in small.reason


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The one budget sweep of the test suite, on tiny data: a method of each kind at 40 MiB
    (full is over it), then full and linear at 64 MiB as well, into the same folder (the
    40 MiB runs are skipped as done). That the estimate behind the choice equals the CPU
    accounting, in training and evaluation, is tested for every method in test_estimate."""
    out = tmp_path_factory.mktemp("budget")
    run = ["run", "--suite", "vl-retrieval", "--device", "cpu", "--output", str(out), *tiny_args()]
    assert main([*run, "--methods", ",".join(SWEPT), "--budget", "40MiB"]) == 0
    assert main([*run, "--methods", "full,linear", "--budget", "40MiB,64MiB"]) == 0
    return out


@pytest.mark.slow
def test_every_method_stays_within_the_budget_it_was_given(sweep):
    for sub, budget, variants in (("budget-40MiB", 40 * MiB, set(SWEPT)), ("budget-64MiB", 64 * MiB, {"full", "linear"})):
        found = records.read_all(sweep / sub)
        assert {r["run"]["variant"] for r in found} == variants
        for r in found:
            if r["run"]["status"] == "over_budget":
                continue
            assert r["run"]["status"] == "ok", r["run"]
            memory, choice = r["cost"]["memory"], r["budget"]
            assert memory["train_peak_bytes"] <= budget and memory["eval_peak_bytes"] <= budget
            # on the CPU the estimate is the accounting, to the byte
            assert memory["train_peak_bytes"] == choice["estimated_train_peak_bytes"]
            assert memory["eval_peak_bytes"] == choice["estimated_eval_peak_bytes"]
            assert choice["exceeded"] == [] and choice["bytes"] == budget
            assert r["cost"]["timed_steps"][-1] == choice["steps"] - 1 and choice["samples"] == choice["steps"] * choice["batch_size"]
            # the suite in the record is the suite: nothing derived was written into it
            assert r["config"]["suite"]["train"]["batch_size"] == 8 and r["config"]["suite"]["budget"]["bytes"] == budget


@pytest.mark.slow
def test_samples_seen_are_equal_to_within_one_batch(sweep):
    for sub in ("budget-40MiB", "budget-64MiB"):
        ok = [r for r in records.read_all(sweep / sub) if r["run"]["status"] == "ok"]
        assert len({r["budget"]["batch_size"] for r in ok}) > 1  # the methods chose different batches
        target = 8 * 4  # the suite's batch x steps
        for r in ok:
            assert abs(r["budget"]["samples"] - target) <= r["budget"]["batch_size"] or r["budget"]["steps"] == 3


@pytest.mark.slow
def test_over_budget_is_a_status_that_report_and_compare_understand(sweep, tmp_path, capsys):
    [full] = [r for r in records.read_all(sweep / "budget-40MiB") if r["run"]["variant"] == "full"]
    assert full["run"]["status"] == "over_budget" and "minimum batch 8" in full["run"]["error"]
    assert full["budget"]["estimated_train_peak_bytes"] > 40 * MiB and full["budget"]["batch_size"] is None
    assert re.search(r"\| full +\| full +\| 1 over budget +\|", report(records.read_all(sweep / "budget-40MiB")))
    # the same run ok at 64 MiB, over budget at 40 MiB: a regression for compare (same suite name)
    base, current = tmp_path / "base", tmp_path / "current"
    for folder, sub in ((base, "budget-64MiB"), (current, "budget-40MiB")):
        folder.mkdir()
        path = sweep / sub / "full--seed0.json"
        record = records.read(path)
        record["run"]["suite_hash"] = "same"  # compare refuses different suites; the status is what is tested
        records.write_atomic(folder / path.name, record)
    assert main(["compare", str(base), str(current)]) == 1
    assert "full seed 0 (vl-retrieval) was ok and is now over budget" in capsys.readouterr().out


@pytest.mark.slow
def test_report_and_plot_read_the_parent_and_group_by_suite_hash(sweep, tmp_path, capsys):
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| variant" in out and "rSum at 40MiB" in out and "rSum at 64MiB" in out
    assert out.count("### vl-retrieval v1 (suite_hash") == len(list(sweep.glob("budget-*")))  # one table per budget
    curve = out.split("rSum at 64MiB")[1].split("\n\n")[0]
    assert re.search(r"\| full +\| over budget +\| [0-9.]+ \(batch 8\)", curve)  # full: over 40 MiB, batch 8 at 64 MiB
    written = write_plots(records.read_folders([sweep]), tmp_path)
    assert {"rsum_vs_budget.png", "rsum_vs_budget.pdf"} <= {p.name for p in written}
    assert (sweep / "rsum_vs_budget.png").exists() and (sweep / "report.md").exists()  # written by the run


@pytest.mark.slow
def test_resume_skips_only_what_the_budget_leaves_unchanged(sweep, capsys):
    args = ["run", "--suite", "vl-retrieval", "--methods", "linear", "--device", "cpu", "--output", str(sweep), *tiny_args()]
    assert main([*args, "--budget", "64MiB"]) == 0
    assert "already done, skipped" in capsys.readouterr().out
    assert main([*args, "--budget", "48MiB"]) == 0  # another budget: another folder, run again
    text = capsys.readouterr().out
    assert "already done" not in text and "linear seed 0: ok" in text
    # another rule under the same budget would change the run: refused, never skipped
    assert main([*args, "--budget", "64MiB", "--set", "budget.batch_multiple=16"]) == 2
    assert "budget.batch_multiple" in capsys.readouterr().err


@pytest.mark.slow
def test_estimate_budget_records_share_one_suite_hash_and_say_over_budget(tmp_path, capsys):
    assert main(["estimate", "--model", "embedded-clip", "--methods", "full,linear", "--budget", "80MiB", "--output", str(tmp_path)]) == 0
    found = records.read_all(tmp_path)
    assert len({r["run"]["suite_hash"] for r in found}) == 1
    status = {r["run"]["variant"]: r["run"]["status"] for r in found}
    assert status == {"full": "over_budget", "linear": "ok"}
    [linear] = [r for r in found if r["run"]["variant"] == "linear"]
    assert linear["budget"]["batch_size"] >= 1 and linear["config"]["suite"]["train"]["batch_size"] == 64
