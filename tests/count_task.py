"""A task that exists only to prove the task axis: how many objects a generated scene holds
(2 or 3), classified from the image tower alone by a linear head that always trains. It
lives with the tests and touches nothing in petlbench: importing this module registers it,
and a suite names it (`tests/count-objects.yaml`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.config import ConfigError, Precision, SuiteConfig
from petlbench.data import scenes
from petlbench.data.pixels import to_pixels
from petlbench.precision import autocast
from petlbench.tasks import TASKS, Metric, TaskSpec, register
from petlbench.tasks.base import Batch, Split, Task

NAME = "count-objects"
CLASSES = scenes.TARGET_OBJECTS  # a scene of the multi-object target holds 2 or 3 objects

SPEC = TASKS.get(NAME) or register(
    TaskSpec(
        name=NAME,
        display="object counting",
        metrics=(Metric("accuracy", "accuracy (%)"), Metric("loss", "eval loss", higher_is_better=False)),
        primary="accuracy",
        module=__name__,
        unit="scenes",
        head="a linear classifier over the image embedding",
    )
)


@dataclass
class CountSplit(Split):
    pixels: torch.Tensor  # (n, 3, H, W)
    labels: torch.Tensor  # (n,) the class: objects - 2

    def training_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        n = len(self.labels)
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = order[start : start + batch_size]
                yield {"pixel_values": self.pixels[idx], "labels": self.labels[idx]}

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.labels), batch_size):
            yield self.pixels[i : i + batch_size], self.labels[i : i + batch_size]


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "accuracy": 100.0 * (logits.argmax(dim=1) == labels).double().mean().item(),
        "loss": F.cross_entropy(logits.double(), labels).item(),
    }


class CountObjects(Task):
    spec = SPEC

    def check_data(self, suite: SuiteConfig) -> tuple[int, int]:
        if suite.data.kind != "scenes" or suite.data.target != "multi-object":
            raise ConfigError(f"task {NAME!r} counts the objects of generated multi-object scenes: data.kind scenes, target multi-object")
        return suite.data.train_images, getattr(suite.data, f"{suite.eval.split}_images")

    def splits(self, suite: SuiteConfig, tokenizer, image_processor, pin_memory: bool) -> dict[str, CountSplit]:
        data = suite.data
        generated = scenes.target_splits(data.seed, {"train": data.train_images, "val": data.val_images, "test": data.test_images})
        return {
            name: CountSplit(to_pixels(split.images), torch.tensor([len(scene) - CLASSES[0] for scene in split.scenes]))
            for name, split in generated.items()
        }

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model.task_head(model.encode_image(batch["pixel_values"])), batch["labels"])

    @torch.no_grad()
    def evaluate(
        self, model, split: CountSplit, batch_size: int, device: torch.device, folds: int, precision: Precision, host: Callable
    ) -> dict:
        was_training = model.training
        model.eval()
        try:
            logits = []
            for pixels, _ in host(split.batches(batch_size)):
                with autocast(precision, device.type):
                    logits.append(model.task_head(model.encode_image(pixels.to(device, copy=True))).float())
        finally:
            model.train(was_training)
        logits, labels = torch.cat(logits).cpu(), split.labels
        n = len(labels)
        out = {"values": scores(logits, labels), "evaluated": {"images": n}, "folds": None}
        if folds > 1:
            m = n // folds
            per_fold = [scores(logits[f * m : (f + 1) * m], labels[f * m : (f + 1) * m]) for f in range(folds)]
            out["folds"] = {
                "count": folds,
                "evaluated": {"images": m},
                "values": {k: statistics.fmean(s[k] for s in per_fold) for k in per_fold[0]},
            }
        return out

    def eval_items(self, split: CountSplit) -> int:
        return len(split.labels)

    def random_batch(self, architecture, batch_size: int, suite: SuiteConfig) -> Batch:
        side = architecture.image_size
        return {
            "pixel_values": torch.randn(batch_size, architecture.num_channels, side, side),
            "labels": torch.randint(len(CLASSES), (batch_size,)),
        }

    def random_split(self, architecture, items: int, suite: SuiteConfig) -> CountSplit:
        side = architecture.image_size
        return CountSplit(torch.empty(items, architecture.num_channels, side, side), torch.randint(len(CLASSES), (items,)))

    def new_head(self, backbone: nn.Module) -> nn.Module:
        return nn.Linear(backbone.embed_dim, len(CLASSES), device=backbone.device)


TASK = CountObjects()
