"""Text-to-text classification (GLUE-style, as T5 and the LST code cast it): an
encoder-decoder trained by teacher-forced cross-entropy on label words, judged by greedy
generation parsed back to labels, with each task's metrics and their average over tasks.
The spec only; `petlbench.tasks.glue.task` implements it."""

from petlbench.tasks import Metric, TaskSpec, register
from petlbench.tasks.glue.definitions import GENERATED, GLUE, METRIC_LABELS

SCORE = "score"


def _metrics() -> tuple[Metric, ...]:
    per_task = [
        Metric(name, f"{task.name} {METRIC_LABELS[kind]}")
        for task in (*GENERATED.values(), *GLUE.values())
        for kind, name in zip(task.metrics, task.metric_names, strict=True)
    ]
    return (*per_task, Metric(SCORE, "score", axis="score (mean over tasks)"))


TEXT_TO_TEXT = register(
    TaskSpec(
        name="glue",
        display="text-to-text classification",
        metrics=_metrics(),
        primary=SCORE,
        module="petlbench.tasks.glue.task",
        unit="examples",
        families=("t5",),
        unsupported={"linear": "a text-to-text model has no embedding to probe: its output is generated text"},
        describe_evaluated=lambda e: ", ".join(f"{n:,} {task} test examples" for task, n in e.items()),
    )
)
