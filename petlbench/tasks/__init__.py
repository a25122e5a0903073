"""Tasks: what is learned and how it is judged, the first of a run's three axes (task,
backbone family, method). A task owns its data splits, the training loss of a batch, the
evaluation into named metrics (each with its direction, one of them primary), the random
batch and evaluation split the estimate costs, the set-up batches a method may read, and
the head that always trains, if any.

A task is one package here (`petlbench.tasks.<name>`) whose ``__init__`` registers its
`TaskSpec` with `register` without importing torch (`petlbench list`, the reports and
the record reader read specs alone); the spec names the module that implements it (a
`petlbench.tasks.base.Task`), imported when a run, an estimate or a dry run first needs
it. A task from outside the package registers the same way from any module imported
before the suite that names it is loaded (the tests do this).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from petlbench.config import DEFAULT_TASK, ConfigError, short

if TYPE_CHECKING:
    from petlbench.tasks.base import Task


@dataclass(frozen=True)
class Metric:
    """One named figure of a task's evaluation."""

    name: str  # the key in a record's `metrics.values`
    label: str  # its column header ("i2t R@1", "accuracy")
    higher_is_better: bool = True
    axis: str = ""  # its axis label in figures, where it says more than the label ("rSum (max 600)")

    @property
    def axis_label(self) -> str:
        return self.axis or self.label


# A paper table's metric columns at one width: (top header, ((metric, header under it), ...)), in order.
PaperColumns = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


def _counts(evaluated: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {what}" for what, n in evaluated.items())


@dataclass
class TaskSpec:
    """What a task is to the rest of petlbench, without its implementation."""

    name: str  # what a suite's `task` names
    display: str  # in table captions and figure titles ("image-text retrieval")
    metrics: tuple[Metric, ...]  # in table order
    primary: str  # the metric that ranks methods, compares runs and draws the Pareto frontier
    module: str  # the module implementing it: it defines `TASK`, a `petlbench.tasks.base.Task`
    unit: str = "items"  # what its splits hold, for messages ("images")
    # The backbone families it serves (a suite whose model is of another family is refused).
    families: tuple[str, ...] = ("clip", "vse")
    # The head that always trains, for every method, in words (None: the task adds none).
    head: str | None = None
    # Methods that cannot serve the task, each with why in one line: their runs are
    # records with status unsupported, as for a backbone family a method has no builder for.
    unsupported: dict[str, str] = field(default_factory=dict)
    # How a paper table shows the metrics at each width ("text", "column"); a width not
    # here gets every metric under its own label. And what its caption adds at each width.
    paper: dict[str, PaperColumns] = field(default_factory=dict)
    paper_note: dict[str, str] = field(default_factory=dict)
    # What an evaluation read (a record's `metrics.evaluated`), as a caption says it.
    describe_evaluated: Callable[[dict[str, int]], str] = _counts
    _implementation: Task | None = field(default=None, repr=False)

    def __post_init__(self):
        names = [m.name for m in self.metrics]
        shown = {metric for columns in self.paper.values() for _, under in columns for metric, _ in under}
        if len(set(names)) < len(names) or self.primary not in names or not shown <= set(names):
            raise ValueError(f"task {self.name!r}: metric names must be distinct, and the primary and paper metrics among {names}")

    def unsupported_reason(self, method: str) -> str | None:
        """None when ``method`` serves this task; else why not, in one line."""
        if method not in self.unsupported:
            return None
        return f"method {method!r} does not serve the {self.name!r} task: {self.unsupported[method]}"

    def unserved_family(self, family: str) -> str | None:
        """None when the task serves backbone ``family``; else why not, in one line."""
        if family in self.families:
            return None
        return f"the {self.name!r} task needs a backbone of the {', '.join(self.families)} family; the model is a {family!r} one"

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def paper_columns(self, width: str) -> PaperColumns:
        """The metric columns of a paper table at ``width``."""
        return self.paper.get(width, tuple((m.label, ((m.name, m.label),)) for m in self.metrics))

    @property
    def primary_metric(self) -> Metric:
        return self.metric(self.primary)

    @property
    def implementation(self) -> Task:
        """The task's code (importing its module, and so torch, on first use)."""
        if self._implementation is None:
            self._implementation = importlib.import_module(self.module).TASK
        return self._implementation


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Register ``spec`` once, under its name."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} registered twice")
    TASKS[spec.name] = spec
    return spec


def _shipped() -> list[str]:
    """The task packages inside petlbench."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if info.ispkg)


def registered() -> dict[str, TaskSpec]:
    """Every task: the shipped ones (imported here) and any registered from outside."""
    for name in _shipped():
        importlib.import_module(f"{__name__}.{name}")
    return TASKS


def get_task(name: str = DEFAULT_TASK, where: str = "task") -> TaskSpec:
    """The spec of task ``name``; a `ConfigError` naming the known tasks where there is none."""
    if name not in TASKS and name in _shipped():
        importlib.import_module(f"{__name__}.{name}")
    if name not in TASKS:
        raise ConfigError(f"{where}: unknown task {short(name)}; registered: {', '.join(sorted(registered()))}")
    return TASKS[name]
