"""The text tasks' metrics on label words, as the official LST code computes them (its
`seq2seq/metrics/metrics.py`, in percent), written out rather than taken from scikit-learn
and scipy, which petlbench does not otherwise need; tests/test_glue.py checks each against
them. A prediction that is not a label word is wrong: its own class for Matthews'
correlation, the opposite of the truth for F1, -1 for a score."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from petlbench.tasks.glue.definitions import ACCURACY, F1, MCC, PEARSON, SPEARMAN, TextTask, score_value


def accuracy(predictions: list[str], targets: list[str]) -> float:
    return 100.0 * sum(p == t for p, t in zip(predictions, targets, strict=True)) / len(targets)


def matthews(predictions: list[str], targets: list[str]) -> float:
    """The multiclass Matthews correlation (Gorodkin's R_K, what scikit-learn computes) over
    every distinct string, an unparsable output being a class of its own; 0 where undefined."""
    n = len(targets)
    correct = sum(p == t for p, t in zip(predictions, targets, strict=True))
    predicted, true = Counter(predictions), Counter(targets)
    covariance = correct * n - sum(predicted[k] * true[k] for k in predicted.keys() | true.keys())
    denominator = math.sqrt((n * n - sum(c * c for c in predicted.values())) * (n * n - sum(c * c for c in true.values())))
    return 100.0 * covariance / denominator if denominator else 0.0


def f1_with_invalid(predictions: list[str], targets: list[str]) -> float:
    """F1 of the positive label "1"; a prediction other than "0" or "1" counts as the
    opposite of its target."""
    fixed = [p if p in ("0", "1") else ("0" if t == "1" else "1") for p, t in zip(predictions, targets, strict=True)]
    tp = sum(p == t == "1" for p, t in zip(fixed, targets, strict=True))
    positives, relevant = fixed.count("1"), targets.count("1")
    return 100.0 * 2 * tp / (positives + relevant) if positives + relevant else 0.0


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denominator if denominator else math.nan


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties at their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def pearson(predictions: list[str], targets: list[str]) -> float:
    """Pearson's r of the parsed scores (0 where undefined, as when every prediction is equal)."""
    r = _pearson(np.array([score_value(p) for p in predictions]), np.array([score_value(t) for t in targets]))
    return 0.0 if math.isnan(r) else 100.0 * r


def spearman(predictions: list[str], targets: list[str]) -> float:
    """Spearman's rho: Pearson's r of the average ranks (0 where undefined)."""
    p, t = (_ranks(np.array([score_value(s) for s in strings])) for strings in (predictions, targets))
    r = _pearson(p, t)
    return 0.0 if math.isnan(r) else 100.0 * r


METRICS = {MCC: matthews, ACCURACY: accuracy, F1: f1_with_invalid, PEARSON: pearson, SPEARMAN: spearman}


def task_metrics(task: TextTask, predictions: list[str], targets: list[str]) -> dict[str, float]:
    """Every metric of ``task``, under its record name (`TextTask.metric_names`)."""
    return {name: METRICS[kind](predictions, targets) for kind, name in zip(task.metrics, task.metric_names, strict=True)}
