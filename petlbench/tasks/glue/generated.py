"""The embedded text tasks, generated over the scene vocabulary of the embedded image data
(`petlbench.data.scenes`) in three GLUE shapes (`definitions.GENERATED`):

- ``consistency`` (one sentence, CoLA's shape): is a one-object description well formed,
  one size, colour and shape word in that order? Label 0 where a second colour or a second
  shape was inserted, or the colour removed. Half are well formed. A pattern of
  neighbouring words: the easy task.
- ``paraphrase`` (a pair, MRPC's shape): two descriptions in other words (size and place
  have synonyms); label 1 where they describe the same object, 0 where the second object
  is of the other size. Half are paraphrases. The pair must be compared: the size words of
  both, through their synonyms.
- ``overlap`` (a pair, STS-B's shape): two one-object descriptions; the score is on how
  many of five coarse properties the two objects agree (0 to 5): large or not, a warm
  colour (red, orange, yellow) or not, round (circle, ring) or not, in the top row or not,
  in the left column or not. Five comparisons, each through synonyms: the hard task.

Tiny transformers learn a pattern of neighbouring words in a couple of hundred steps but
a comparison across the pair only after a plateau, which is why the three differ in
difficulty (measured: docs/results.md).

Each split of each task draws from its own generator (seeded by the data seed, the split
and the task), so the data set is identical for every run seed.
"""

from __future__ import annotations

import numpy as np

from petlbench.data import scenes
from petlbench.data.scenes import GRID, SceneObject
from petlbench.tasks.glue.definitions import GENERATED, TextTask

Example = tuple[tuple[str, ...], str]  # (the fields' texts, the label word)
SPLITS = ("train", "val", "test")
WARM = ("red", "orange", "yellow")
ROUND = ("circle", "ring")


def properties(obj: SceneObject) -> tuple[bool, ...]:
    """The five coarse properties `overlap` compares."""
    row, col = divmod(obj.cell, GRID)
    return obj.size == "large", obj.colour in WARM, obj.shape in ROUND, row == 0, col == 0


def _object(rng: np.random.Generator, cell: int | None = None) -> SceneObject:
    return SceneObject(
        int(rng.integers(GRID * GRID)) if cell is None else cell,
        scenes.SHAPES[rng.integers(len(scenes.SHAPES))],
        list(scenes.COLOURS)[rng.integers(len(scenes.COLOURS))],
        list(scenes.SIZES)[rng.integers(len(scenes.SIZES))],
    )


def _other(rng: np.random.Generator, values, value):
    return rng.choice([v for v in values if v != value])


def consistency(rng: np.random.Generator) -> Example:
    obj, label = _object(rng), int(rng.integers(2))
    words = scenes.describe(obj, rng).split()
    if not label:
        at, corruption = words.index(obj.colour), int(rng.integers(3))
        if corruption == 0:
            words.insert(at, str(_other(rng, list(scenes.COLOURS), obj.colour)))
        elif corruption == 1:
            words.insert(at + 2, str(_other(rng, scenes.SHAPES, obj.shape)))
        else:
            del words[at]
    return (" ".join(words),), str(label)


def paraphrase(rng: np.random.Generator) -> Example:
    obj, label = _object(rng), int(rng.integers(2))
    other = obj if label else SceneObject(obj.cell, obj.shape, obj.colour, str(_other(rng, list(scenes.SIZES), obj.size)))
    return (scenes.describe(obj, rng), scenes.describe(other, rng)), str(label)


def overlap(rng: np.random.Generator) -> Example:
    a, b = _object(rng), _object(rng)
    agree = sum(x == y for x, y in zip(properties(a), properties(b), strict=True))
    return (scenes.describe(a, rng), scenes.describe(b, rng)), f"{agree:.1f}"


MAKERS = {"consistency": consistency, "paraphrase": paraphrase, "overlap": overlap}


def generate(task: TextTask, n: int, seed: int, split: str) -> list[Example]:
    """``n`` examples of ``task`` for ``split``, from the generator of (seed, split, task)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), list(GENERATED).index(task.name)])
    return [MAKERS[task.name](rng) for _ in range(n)]
