"""Text-to-text classification, implemented: the suite's tasks cast to source and target
token ids (fixed lengths, so that every method's step has the same shapes), one training
mixture of every task's examples, teacher-forced cross-entropy on the target tokens, and
evaluation by greedy generation parsed back to label words, judged per task."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.config import ESTIMATE_TARGET_LENGTH, ConfigError, Precision, SuiteConfig, TextDataConfig
from petlbench.models.loader import Architecture
from petlbench.precision import autocast
from petlbench.tasks.base import Batch, Split, Task
from petlbench.tasks.glue import SCORE, TEXT_TO_TEXT
from petlbench.tasks.glue.definitions import TASKS_OF_KIND, TextTask, source_text
from petlbench.tasks.glue.files import glue_splits
from petlbench.tasks.glue.generated import Example, generate
from petlbench.tasks.glue.metrics import task_metrics

IGNORED = -100  # a padded target position: no loss


def suite_tasks(data: TextDataConfig) -> list[TextTask]:
    """The suite's tasks, each known to its data kind (`ConfigError` naming the others)."""
    known = TASKS_OF_KIND[data.kind]
    if unknown := [name for name in data.tasks if name not in known]:
        raise ConfigError(f"key 'data.tasks': {unknown[0]!r} is not a {data.kind} task; known: {', '.join(known)}", key="data.tasks")
    return [known[name] for name in data.tasks]


def examples(data: TextDataConfig, task: TextTask) -> dict[str, list[Example]]:
    if data.kind == "generated":
        sizes = {"train": data.train_examples, "val": data.val_examples, "test": data.test_examples}
        return {split: generate(task, n, data.seed, split) for split, n in sizes.items()}
    return glue_splits(data, task)


def target_length(data: TextDataConfig, tokenizer: Any) -> int:
    """The suite's target length, else the longest label word's token count with the end token
    (as the official code measures it)."""
    return data.target_length or max(len(tokenizer(label)["input_ids"]) for task in suite_tasks(data) for label in task.labels)


@dataclass
class TaskExamples:
    """One task's examples as token ids."""

    task: TextTask
    input_ids: torch.Tensor  # (n, source length)
    attention_mask: torch.Tensor  # (n, source length)
    decoder_input_ids: torch.Tensor  # (n, target length): the target shifted right after the start token
    labels: torch.Tensor  # (n, target length), IGNORED on padding
    targets: list[str]  # the label words

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.targets), batch_size):
            yield self.input_ids[i : i + batch_size], self.attention_mask[i : i + batch_size]


@dataclass
class TextSplit(Split):
    """Every task's examples of one split; training mixes them (each example once per epoch)."""

    parts: list[TaskExamples]
    start_id: int  # the decoder's start token
    # generated ids (B, steps) -> their text (no spaces: a word-level tokenizer spaces "4 . 0")
    decode: Callable[[torch.Tensor], list[str]]

    def training_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        keys = ("input_ids", "attention_mask", "decoder_input_ids", "labels")
        data = {key: torch.cat([getattr(part, key) for part in self.parts]) for key in keys}
        n = len(data["labels"])
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = order[start : start + batch_size]
                yield {key: tensor[idx] for key, tensor in data.items()}

    @property
    def target_length(self) -> int:
        return self.parts[0].labels.shape[1]


def tokenized(task: TextTask, examples: list[Example], tokenizer: Any, source: int, target: int, start_id: int) -> TaskExamples:
    sources = tokenizer(
        [source_text(task, fields) for fields, _ in examples], max_length=source, truncation=True, padding="max_length", return_tensors="pt"
    )
    words = [label for _, label in examples]
    targets = tokenizer(words, max_length=target, truncation=True, padding="max_length", return_tensors="pt")
    labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, IGNORED)
    return TaskExamples(task, sources["input_ids"], sources["attention_mask"], shift_right(targets["input_ids"], start_id), labels, words)


def shift_right(ids: torch.Tensor, start_id: int) -> torch.Tensor:
    """The decoder's input for teacher forcing: the start token, then the target but its last token."""
    return torch.cat([torch.full_like(ids[:, :1], start_id), ids[:, :-1]], dim=1)


def text_decoder(tokenizer: Any) -> Callable[[torch.Tensor], list[str]]:
    eos = tokenizer.eos_token_id

    def decode(ids: torch.Tensor) -> list[str]:
        rows = [row[: row.index(eos)] if eos in row else row for row in ids.tolist()]
        return ["".join(tokenizer.decode(row, skip_special_tokens=True).split()) for row in rows]

    return decode


@torch.no_grad()
def greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int, start_id: int) -> torch.Tensor:
    """``steps`` tokens (B, steps) by greedy decoding, as `generate` with `max_length` =
    steps + 1 and no early stop (later tokens are cut at the end token when read): the
    same work for every batch, so that its memory is a function of the shapes alone."""
    encoded = model.encode(input_ids, attention_mask)
    out = torch.full((len(input_ids), 1), start_id, dtype=torch.long, device=input_ids.device)
    for _ in range(steps):
        logits = model.decode(out, encoded)[:, -1]
        out = torch.cat([out, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return out[:, 1:]


def scores(values: dict[str, float], tasks: list[TextTask]) -> float:
    """The mean over tasks of each task's metric mean (GLUE's average)."""
    return statistics.fmean(statistics.fmean(values[name] for name in task.metric_names) for task in tasks)


class TextToText(Task):
    spec = TEXT_TO_TEXT

    def check_data(self, suite: SuiteConfig) -> tuple[int, int]:
        """Every task's files read whole and checked (`files.read_tsv`); counts examples."""
        if suite.eval.folds > 1:
            raise ConfigError(
                f"{suite.eval.folds} evaluation folds: the {self.spec.name!r} task judges each task's split whole", key="eval.folds"
            )
        counts = {split: 0 for split in ("train", "val", "test")}
        for task in suite_tasks(suite.data):
            for split, items in examples(suite.data, task).items():
                counts[split] += len(items)
        return counts["train"], counts[suite.eval.split]

    def splits(self, suite: SuiteConfig, tokenizer, image_processor, pin_memory: bool) -> dict[str, TextSplit]:
        data, start_id = suite.data, tokenizer.pad_token_id
        per_task = [(task, examples(data, task)) for task in suite_tasks(data)]
        length = target_length(data, tokenizer)
        return {
            split: TextSplit(
                [tokenized(task, parts[split], tokenizer, data.text_length, length, start_id) for task, parts in per_task],
                start_id,
                text_decoder(tokenizer),
            )
            for split in ("train", "val", "test")
        }

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model.decode(batch["decoder_input_ids"], model.encode(batch["input_ids"], batch["attention_mask"]))
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORED)

    def evaluate(self, model, split: TextSplit, batch_size, device, folds, precision: Precision, host: Callable) -> dict[str, Any]:
        """Greedy generation of `target_length` - 1 tokens per example (the official
        `max_length` counts the start token), parsed per task; ``folds`` > 1 is refused by
        the suite check. Restores the caller's train/eval mode."""
        was_training = model.training
        model.eval()
        values: dict[str, float] = {}
        try:
            for part in split.parts:
                predictions: list[str] = []
                for ids, mask in host(part.batches(batch_size)):
                    with autocast(precision, device.type):
                        generated = greedy(
                            model, ids.to(device, copy=True), mask.to(device, copy=True), split.target_length - 1, split.start_id
                        )
                    predictions += split.decode(generated.cpu())
                values |= task_metrics(part.task, predictions, part.targets)
        finally:
            model.train(was_training)
        values[SCORE] = scores(values, [part.task for part in split.parts])
        return {"values": values, "evaluated": {part.task.name: len(part.targets) for part in split.parts}, "folds": None}

    def eval_items(self, split: TextSplit) -> int:
        return sum(len(part.targets) for part in split.parts)

    def _target_length(self, suite: SuiteConfig) -> int:
        return suite.data.target_length or ESTIMATE_TARGET_LENGTH

    def random_batch(self, architecture: Architecture, batch_size: int, suite: SuiteConfig) -> Batch:
        """Sources half padding, as real ones are (the encoder builds its mask either way on
        fake tensors), targets of the suite's length."""
        source, target = suite.data.text_length, self._target_length(suite)
        mask = torch.ones(batch_size, source, dtype=torch.long)
        mask[:, (source + 1) // 2 :] = 0
        return {
            "input_ids": torch.randint(architecture.vocab_size, (batch_size, source)),
            "attention_mask": mask,
            "decoder_input_ids": torch.randint(architecture.vocab_size, (batch_size, target)),
            "labels": torch.randint(architecture.vocab_size, (batch_size, target)),
        }

    def random_split(self, architecture: Architecture, items: int, suite: SuiteConfig) -> TextSplit:
        """One task of ``items`` examples; its generations are not read (fake values)."""
        batch = self.random_batch(architecture, items, suite)
        task = suite_tasks(suite.data)[0]
        part = TaskExamples(
            task, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"], batch["labels"], [task.labels[0]] * items
        )
        return TextSplit([part], 0, lambda ids: [task.labels[0]] * len(ids))


TASK = TextToText()
