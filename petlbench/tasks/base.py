"""What a task implements (`Task`), for the loop (`petlbench.train`), the estimate
(`petlbench.estimate`) and the checks before a sweep (`petlbench.sweep`) alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from petlbench.config import Precision, SuiteConfig

if TYPE_CHECKING:
    from petlbench.models.loader import Architecture
    from petlbench.tasks import TaskSpec

Batch = dict[str, torch.Tensor]


class Split(ABC):
    """A split as the loop reads it: endless seeded training batches, in host memory (the
    caller copies them to the device)."""

    workers = 0  # DataLoader worker processes (0: batches are built in this process)

    @abstractmethod
    def training_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Endless training batches, drawn with ``generator``."""


class Task(ABC):
    """A task's code; its declarations (metrics, primary metric, head) are its `spec`."""

    spec: TaskSpec

    @abstractmethod
    def check_data(self, suite: SuiteConfig) -> tuple[int, int]:
        """Check the suite's data section (files read whole, before the first run), and
        return the number of training items and of items the evaluation reads (which the
        suite's `eval.folds` must split equally)."""

    @abstractmethod
    def splits(self, suite: SuiteConfig, tokenizer: Any, image_processor: Any, pin_memory: bool) -> dict[str, Split]:
        """The train / val / test splits of the suite's data section."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of ``batch`` (the caller runs it under the suite's precision)."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, split: Split, batch_size: int, device: torch.device, folds: int, precision: Precision, host: Callable
    ) -> dict[str, Any]:
        """``model`` judged on ``split``: ``values`` (every metric of the spec), ``evaluated``
        (counts of what was read) and ``folds`` (the values' mean over ``folds`` equal folds,
        or None for one fold); batches are read through ``host`` (the loop passes
        `measure.memory.host_batches`) and copied to ``device``. The record's `Metrics`."""

    @abstractmethod
    def eval_items(self, split: Split) -> int:
        """How many inputs an evaluation of ``split`` encodes (its throughput's numerator)."""

    @abstractmethod
    def random_batch(self, architecture: Architecture, batch_size: int, suite: SuiteConfig) -> Batch:
        """A training batch of the suite's shapes and dtypes, for the estimate."""

    @abstractmethod
    def random_split(self, architecture: Architecture, items: int, suite: SuiteConfig) -> Split:
        """An evaluation split of ``items`` with the suite's shapes, for the estimate's
        evaluation phase (built inside a fake mode, it holds no memory)."""

    def new_head(self, backbone: nn.Module) -> nn.Module | None:
        """The task's head (`TaskSpec.head`), new, on ``backbone.device``: it always trains,
        and `loss` and `evaluate` reach it as ``model.task_head`` (`train.prepare` puts it
        there); None for a task without one."""
        return None
