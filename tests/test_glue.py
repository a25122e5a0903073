"""The text-to-text task (`glue`): its metrics against scikit-learn and scipy, the official
GLUE split rules on a GLUE folder the tests make, the checks of bad files, the casting, the
evaluation by greedy generation, and a GLUE folder run end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import scipy.stats
import sklearn.metrics
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from petlbench import records
from petlbench.cli import main
from petlbench.config import PROJECT_ROOT, ConfigError, TextDataConfig, load_suite
from petlbench.data import scenes
from petlbench.models.backbone import Encoded
from petlbench.models.loader import load_preprocessors
from petlbench.tasks.glue import SCORE
from petlbench.tasks.glue import metrics as text_metrics
from petlbench.tasks.glue.definitions import GENERATED, GLUE, source_text
from petlbench.tasks.glue.files import glue_splits
from petlbench.tasks.glue.generated import generate
from petlbench.tasks.glue.task import TASK, TextSplit, text_decoder, tokenized
from tests.glue_files import make_glue_folder, rows, write

LABELS = st.sampled_from(["0", "1"])
OUTPUTS = st.sampled_from(["0", "1", "2", "", "paraphrase"])  # what a model may generate: invalid strings too


def _official_f1(predictions, targets):
    """The LST code's rule, then scikit-learn: an invalid prediction becomes the opposite of its target."""
    fixed = [p if p in ("0", "1") else ("0" if t == "1" else "1") for p, t in zip(predictions, targets, strict=True)]
    return 100 * sklearn.metrics.f1_score([int(t) for t in targets], [int(p) for p in fixed])


def _scipy(fn, predictions, targets):
    """scipy's coefficient, -1 for an unparsable score and 0 where undefined (the official rules)."""
    parse = lambda s: float(s) if s.replace(".", "", 1).isdigit() else -1.0  # noqa: E731
    r = _quietly(fn, [parse(t) for t in targets], [parse(p) for p in predictions])[0]
    return 0.0 if math.isnan(r) else 100 * r


def _quietly(fn, *args):
    """A reference computation without its warnings (an undefined F1 or correlation: the rules above say what it is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(OUTPUTS, LABELS), min_size=1, max_size=40))
def test_classification_metrics_equal_scikit_learn(pairs):
    predictions, targets = [p for p, _ in pairs], [t for _, t in pairs]
    mcc = _quietly(sklearn.metrics.matthews_corrcoef, targets, predictions)
    assert text_metrics.matthews(predictions, targets) == pytest.approx(100 * mcc, abs=1e-9)
    assert text_metrics.accuracy(predictions, targets) == pytest.approx(100 * sklearn.metrics.accuracy_score(targets, predictions))
    assert text_metrics.f1_with_invalid(predictions, targets) == pytest.approx(_quietly(_official_f1, predictions, targets), abs=1e-9)


SCORES = st.sampled_from(["0.0", "1.2", "2.5", "3.8", "5.0", "4.0", "x", ""])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(SCORES, SCORES.filter(lambda s: s not in ("x", ""))), min_size=2, max_size=40))
def test_correlations_equal_scipy(pairs):
    predictions, targets = [p for p, _ in pairs], [t for _, t in pairs]
    assert text_metrics.pearson(predictions, targets) == pytest.approx(_scipy(scipy.stats.pearsonr, predictions, targets), abs=1e-7)
    assert text_metrics.spearman(predictions, targets) == pytest.approx(_scipy(scipy.stats.spearmanr, predictions, targets), abs=1e-7)


def test_sources_are_cast_as_the_official_code():
    assert source_text(GLUE["mrpc"], ("One.", "Two.")) == "mrpc sentence1: One. sentence2: Two."
    assert source_text(GLUE["mnli"], ("P.", "H.")) == "mnli premise: P. hypothesis H."  # no colon, as the official
    assert source_text(GLUE["cola"], ("A sentence.",)) == "cola sentence: A sentence."


def _glue(tmp_path, tasks, **caps) -> TextDataConfig:
    return TextDataConfig(kind="glue", tasks=list(tasks), root=str(tmp_path), **caps)


def _texts(table, column):
    header, *body = table
    return [row[header.index(column)] for row in body]


def _order(n):
    return torch.randperm(n, generator=torch.Generator().manual_seed(42)).tolist()


def test_small_tasks_halve_the_shuffled_validation_set(tmp_path):
    make_glue_folder(tmp_path, ("mrpc", "cola"))
    dev = _texts(rows("mrpc", 20), "#1 String")
    splits = glue_splits(_glue(tmp_path, ["mrpc"]), GLUE["mrpc"])
    order = _order(20)
    assert [f[0] for f, _ in splits["val"]] == [dev[i] for i in order[:10]]
    assert [f[0] for f, _ in splits["test"]] == [dev[i] for i in order[10:]]
    assert [f[0] for f, _ in splits["train"]] == _texts(rows("mrpc", 40), "#1 String")  # all of it, in file order
    cola = glue_splits(_glue(tmp_path, ["cola"]), GLUE["cola"])  # no header: columns by position
    assert [f[0] for f, _ in cola["test"]] == [rows("cola", 20)[i][3] for i in order[10:]]


def test_large_tasks_validate_on_1000_shuffled_training_examples(tmp_path):
    make_glue_folder(tmp_path, ("qnli",))
    train = _texts(rows("qnli", 1012), "question")
    splits = glue_splits(_glue(tmp_path, ["qnli"]), GLUE["qnli"])
    order = _order(1012)
    assert [f[0] for f, _ in splits["val"]] == [train[i] for i in order[:1000]]
    assert [f[0] for f, _ in splits["train"]] == [train[i] for i in order[1000:]]
    assert [f[0] for f, _ in splits["test"]] == _texts(rows("qnli", 20), "question")
    assert {label for _, label in splits["test"]} == {"0", "1"}  # entailment, not_entailment -> 0, 1


def test_mnli_validates_on_mismatched_and_tests_on_matched(tmp_path):
    make_glue_folder(tmp_path, ("mnli",))
    splits = glue_splits(_glue(tmp_path, ["mnli"]), GLUE["mnli"])
    assert len(splits["val"]) == 16 and len(splits["test"]) == 20
    assert [label for _, label in splits["test"][:3]] == ["0", "1", "2"]


def test_a_cap_keeps_the_first_n_of_the_shuffled_split(tmp_path):
    make_glue_folder(tmp_path, ("stsb",))
    splits = glue_splits(_glue(tmp_path, ["stsb"], train_examples=5, test_examples=3), GLUE["stsb"])
    train = _texts(rows("stsb", 40), "sentence1")
    assert [f[0] for f, _ in splits["train"]] == [train[i] for i in _order(40)[:5]]
    assert len(splits["test"]) == 3 and len(splits["val"]) == 10
    assert all(label == str(round(float(label), 1)) for _, label in splits["train"])  # one decimal, as the official target


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda root: (root / "RTE" / "dev.tsv").unlink(), "RTE/dev.tsv: missing"),
        (
            lambda root: write(root / "RTE" / "dev.tsv", [["index", "sentence1", "label"], ["0", "a", "entailment"]]),
            "line 1: no column 'sentence2'",
        ),
        (
            lambda root: write(root / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b"]]),
            "train.tsv: line 2: 3 columns",
        ),
        (
            lambda root: write(root / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", " ", "entailment"]]),
            "train.tsv: line 2: empty text in column 'sentence2'",
        ),
        (
            lambda root: write(root / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"]]),
            "train.tsv: line 2: label 'maybe' is not one of rte's labels (entailment, not_entailment)",
        ),
    ],
)
def test_a_bad_glue_file_is_refused_naming_file_and_line(tmp_path, change, message):
    make_glue_folder(tmp_path, ("rte",))
    change(tmp_path)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        glue_splits(_glue(tmp_path, ["rte"]), GLUE["rte"])


def _read(description: str) -> dict[str, object]:
    """What a one-object description says, read off its words (independently of the generator)."""
    words = description.split()
    return {
        "colours": [w for w in words if w in scenes.COLOURS],
        "shapes": [w for w in words if w in scenes.SHAPES],
        "large": bool({"large", "big"} & set(words)),
        "warm": bool({"red", "orange", "yellow"} & set(words)),
        "round": bool({"circle", "ring"} & set(words)),
        "top": bool({"top", "upper"} & set(words)),
        "left": "left" in words,
    }


def test_generated_tasks_follow_their_rules_and_are_balanced():
    consistency = generate(GENERATED["consistency"], 600, 0, "test")
    assert 250 < sum(label == "1" for _, label in consistency) < 350
    for (text,), label in consistency:
        said = _read(text)
        assert (len(said["colours"]) == 1 and len(said["shapes"]) == 1) == (label == "1")
    for (first, second), label in generate(GENERATED["paraphrase"], 300, 0, "test"):
        a, b = _read(first), _read(second)
        assert (a["colours"], a["shapes"], a["top"], a["left"]) == (b["colours"], b["shapes"], b["top"], b["left"])
        assert (a["large"] == b["large"]) == (label == "1")
    overlap = generate(GENERATED["overlap"], 600, 0, "test")
    for (first, second), label in overlap:
        a, b = _read(first), _read(second)
        assert float(label) == sum(a[k] == b[k] for k in ("large", "warm", "round", "top", "left"))
    assert {label for _, label in overlap} == {f"{k}.0" for k in range(6)}
    assert generate(GENERATED["paraphrase"], 5, 3, "train") == generate(GENERATED["paraphrase"], 5, 3, "train")
    assert generate(GENERATED["paraphrase"], 5, 3, "train") != generate(GENERATED["paraphrase"], 5, 3, "test")


class Answering(nn.Module):
    """A stand-in model that generates a given answer (token ids) per example, in order."""

    def __init__(self, answers: torch.Tensor, vocab: int):
        super().__init__()
        self.answers, self.vocab, self.seen = answers, vocab, 0

    def encode(self, input_ids, attention_mask):
        rows = torch.arange(self.seen, self.seen + len(input_ids))
        self.seen += len(input_ids)
        return Encoded(rows, attention_mask)

    def decode(self, decoder_input_ids, encoded):
        t = decoder_input_ids.shape[1] - 1
        return nn.functional.one_hot(self.answers[encoded.states, t], self.vocab).float().unsqueeze(1).expand(-1, t + 1, -1)


def test_evaluation_parses_generations_and_scores_them_as_references_do():
    tokenizer, _ = load_preprocessors("embedded-t5")
    outputs = {"consistency": ["1", "0", "1", "7", "0", "1"], "overlap": ["4.0", "1.0", "zz", "3.0", "0.0", "5.0"]}
    parts, answers = [], []
    for name, said in outputs.items():
        task = GENERATED[name]
        examples = generate(task, len(said), 0, "test")
        parts.append(tokenized(task, examples, tokenizer, 40, 4, tokenizer.pad_token_id))
        ids = tokenizer([s or "sentence" for s in said], padding="max_length", max_length=4)["input_ids"]
        answers += ids
    split = TextSplit(parts, tokenizer.pad_token_id, text_decoder(tokenizer))
    model = Answering(torch.tensor(answers), len(tokenizer))
    values = TASK.evaluate(model, split, 4, torch.device("cpu"), 1, "fp32", iter)["values"]
    targets = {part.task.name: part.targets for part in parts}
    said = {name: [s.replace("zz", "") for s in outputs[name]] for name in outputs}  # "zz" is no word: <unk>, dropped when decoded
    assert values["consistency_mcc"] == pytest.approx(100 * sklearn.metrics.matthews_corrcoef(targets["consistency"], said["consistency"]))
    parse = lambda s: float(s) if s else -1.0  # noqa: E731
    expected = 100 * scipy.stats.pearsonr([parse(t) for t in targets["overlap"]], [parse(s) for s in said["overlap"]])[0]
    assert values["overlap_pearson"] == pytest.approx(expected)
    per_task = [values["consistency_mcc"], (values["overlap_pearson"] + values["overlap_spearman"]) / 2]
    assert values[SCORE] == pytest.approx(sum(per_task) / 2)


@pytest.mark.slow
def test_a_glue_folder_runs_end_to_end_with_the_official_splits(tmp_path):
    """Every GLUE task from files made by the tests, on the shipped T5 (its word-level
    vocabulary knows few of these words: this checks the path, not the scores)."""
    root = make_glue_folder(tmp_path / "glue_data")
    suite = load_suite("glue")
    spec = {
        **dataclasses.asdict(suite),
        "model": {"name": "embedded-t5", "attn_implementation": "sdpa", "allow_pickle": False},
        "data": {**dataclasses.asdict(suite.data), "root": str(root), "text_length": 24},
        "train": {**dataclasses.asdict(suite.train), "batch_size": 4, "steps": 3, "warmup_steps": 1, "measure_steps": 1},
        "seeds": [0],
    }
    path = tmp_path / "glue-files.yaml"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert main(["run", "--suite", str(path), "--variants", "bitfit", "--output", str(out), "--jobs", "1"]) == 0
    record = json.loads(records.record_path(out, "bitfit", 0).read_text())
    assert record["run"]["status"] == "ok"
    metrics = record["metrics"]
    # test splits as the rules make them: halves of 20 validation rows, or the 20 validation rows
    halves = {"cola", "mrpc", "stsb", "rte"}
    assert metrics["evaluated"] == {task: 10 if task in halves else 20 for task in suite.data.tasks}
    names = {name for task in suite.data.tasks for name in GLUE[task].metric_names}
    assert set(metrics["values"]) == names | {SCORE}


def test_the_data_section_takes_the_schema_of_the_suites_task(tmp_path):
    """`task: glue` reads its data section as text tasks (its keys, its checks, its
    overrides); a retrieval suite's is unchanged."""
    path = tmp_path / "text.yaml"
    path.write_text((PROJECT_ROOT / "suites" / "glue-embedded.yaml").read_text().replace("  seed: 0\n", "  seed: 0\n  images: x\n"))
    with pytest.raises(ConfigError, match="unknown key 'data.images'; allowed keys: kind, tasks, root, seed"):
        load_suite(str(path))
    assert load_suite("glue-embedded", ["data.tasks=[overlap]"]).data.tasks == ["overlap"]
    with pytest.raises(ConfigError, match="data.train_examples.*at least 1"):
        load_suite("glue-embedded", ["data.train_examples=0"])
    with pytest.raises(ConfigError, match="key 'data.root': required for data.kind 'glue'"):
        load_suite("glue-embedded", ["data.kind=glue"])
    assert type(load_suite("vl-retrieval").data).__name__ == "DataConfig"


def test_an_unknown_task_name_names_the_known_ones(cli):
    code, _, err = cli("run", "--suite", "glue-embedded", "--set", "data.tasks=[cola]", "--dry-run")
    assert code == 2 and "key 'data.tasks': 'cola' is not a generated task; known: consistency, paraphrase, overlap" in err


def test_a_model_of_a_family_the_task_does_not_serve_is_refused(cli):
    code, _, err = cli("run", "--suite", "glue-embedded", "--set", "model.name=embedded-clip", "--dry-run")
    assert code == 2 and "key 'model.name': 'embedded-clip': the 'glue' task needs a backbone of the t5 family" in err
    code, _, err = cli("run", "--suite", "vl-retrieval", "--set", "model.name=embedded-t5", "--dry-run")
    assert code == 2 and "the 'retrieval' task needs a backbone of the clip, vse family; the model is a 't5' one" in err


@pytest.mark.parametrize("rule", ["head", "temperature"])
def test_a_head_or_temperature_t5_lacks_cannot_train(cli, rule):
    code, _, err = cli("run", "--suite", "glue-embedded", "--variants", "lora-r32", "--set", f"train.{rule}=trainable", "--dry-run")
    assert code == 2 and f"train.{rule}: trainable, but a 't5' backbone has no" in err


def test_variants_that_do_not_apply_to_t5_are_unsupported_runs_with_the_reason(cli, tmp_path):
    code, out, _ = cli("run", "--suite", "glue-embedded", "--variants", "prompt,bitfit,linear,dtl", "--dry-run", "--output", str(tmp_path))
    assert code == 0
    assert "prompt seed 0: unsupported (prompt: depth 'deep' on an encoder-decoder" in out
    assert "linear seed 0: unsupported (method 'linear' does not serve the 'glue' task: a text-to-text model has no embedding" in out
    assert "dtl seed 0: unsupported (method 'dtl' does not apply to a 't5' backbone" in out and "bitfit seed 0: would run" in out


def test_a_paper_table_shows_the_metrics_of_the_suites_own_tasks():
    """The glue task knows eleven GLUE metrics and five embedded ones; the committed embedded
    baseline records five, and the paper table shows those and the score, no empty column."""
    from petlbench.report.paper import build

    folder = PROJECT_ROOT / "results" / "baselines" / "glue-embedded-default"
    table = build(records.read_folders([folder]), "glue", "text")
    shown = [c.figure.removeprefix("metric.") for _, under in table.headers[2:] for c in under]
    assert shown == ["consistency_mcc", "paraphrase_f1", "paraphrase_acc", "overlap_pearson", "overlap_spearman", SCORE]
