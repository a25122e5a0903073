"""Deterministic synthetic scenes with Flickr30K-style captions (the embedded data set).

Each image shows a few objects on a 3x3 grid; an object is (shape, colour, size, cell).
Every caption names every object with all four attributes, so a caption determines its
image exactly: with images unique within a split, no caption describes two images of a
split and instance-level retrieval is well posed. Paraphrases differ in word choice
(synonyms), object order and an optional spatial relation between two objects.

The *source* distribution (single objects) pretrains the shipped model. Two targets
(`data.target`) are fine-tuned and evaluated on: `multi-object` (2-3 objects in the
source's look: far transfer, binding several objects is new) and `shifted` (single
objects under a visual domain shift, `ShiftConfig`, with attribute combinations unseen in
training held out for val and test: near transfer).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from petlbench.config import ShiftConfig

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 50),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
    "cyan": (40, 210, 220),
    "white": (235, 235, 235),
}
SIZES = {"small": 4.0, "large": 7.0}  # object radius in pixels
SIZE_SYNONYMS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
CELL_NAMES = (
    ("top left", "upper left"),
    ("top", "top middle"),
    ("top right", "upper right"),
    ("left", "middle left"),
    ("center", "middle"),
    ("right", "middle right"),
    ("bottom left", "lower left"),
    ("bottom", "bottom middle"),
    ("bottom right", "lower right"),
)
GRID = 3
IMAGE_SIZE = 48
CAPTIONS_PER_IMAGE = 5
_LEADS = ("", "there is ", "a picture of ", "an image with ", "we see ")
_PLACE_WORDS = ("in the", "at the")
_RELATIONS = ("left of", "right of", "above", "below")
_FILLER = "a an and is , the of there picture image with we see in at".split()


def vocabulary() -> list[str]:
    """Every word a caption can contain (the tokenizer's vocabulary, special tokens aside)."""
    words: set[str] = set(_FILLER)
    words.update(SHAPES, COLOURS)
    for names in SIZE_SYNONYMS.values():
        words.update(names)
    for names in CELL_NAMES:
        for name in names:
            words.update(name.split())
    for phrase in _RELATIONS:
        words.update(phrase.split())
    return sorted(words)


@dataclass(frozen=True, order=True)
class SceneObject:
    cell: int
    shape: str
    colour: str
    size: str


Scene = tuple[SceneObject, ...]  # sorted by cell: the scene's canonical key


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(obj: SceneObject, rng: np.random.Generator) -> str:
    size = rng.choice(SIZE_SYNONYMS[obj.size])
    place = rng.choice(_PLACE_WORDS)
    cell = rng.choice(CELL_NAMES[obj.cell])
    return f"{_article(size)} {size} {obj.colour} {obj.shape} {place} {cell}"


def relation(a: SceneObject, b: SceneObject) -> str:
    """The spatial relation of ``a`` to ``b`` (distinct cells), horizontal first."""
    (ra, ca), (rb, cb) = divmod(a.cell, GRID), divmod(b.cell, GRID)
    if ca != cb:
        return "left of" if ca < cb else "right of"
    return "above" if ra < rb else "below"


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five paraphrases; the last one states a relation between two objects when it can."""
    out: list[str] = []
    for k in range(CAPTIONS_PER_IMAGE):
        order = list(scene) if k % 2 == 0 else list(reversed(scene))
        parts = [describe(o, rng) for o in order]
        lead = _LEADS[k]
        if k == CAPTIONS_PER_IMAGE - 1 and len(order) >= 2:
            head = f"{parts[0]} is {relation(order[0], order[1])} {parts[1]}"
            text = " and ".join([head, *parts[2:]])
        elif len(parts) > 2:
            text = " , ".join(parts[:-1]) + " and " + parts[-1]
        else:
            text = " and ".join(parts)
        out.append(lead + text)
    return out


def random_scene(rng: np.random.Generator, n_objects: int) -> Scene:
    cells = rng.choice(GRID * GRID, size=n_objects, replace=False)
    return tuple(
        sorted(
            SceneObject(
                int(c),
                SHAPES[rng.integers(len(SHAPES))],
                list(COLOURS)[rng.integers(len(COLOURS))],
                list(SIZES)[rng.integers(len(SIZES))],
            )
            for c in cells
        )
    )


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _shape_mask(shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = _YY - cy, _XX - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "cross":
        arm = max(1.0, 0.3 * r)
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if shape == "triangle":  # apex up
        return (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(f"unknown shape {shape!r}")


# The source's look as shift settings (no shift): what the shipped model was pretrained on,
# and how the multi-object target is drawn.
SOURCE_LOOK = ShiftConfig(
    background_low=30.0,
    background_high=30.0,
    texture_amplitude=0.0,
    noise_std=8.0,
    colour_jitter_std=8.0,
    contrast_low=1.0,
    contrast_high=1.0,
)


def _uniform(rng: np.random.Generator, low: float, high: float, size=None):
    """U[low, high], drawing nothing when the range is a point: a setting at its neutral
    value leaves the random stream (and so every later pixel) as it was without it."""
    return rng.uniform(low, high, size) if low < high else (low if size is None else np.full(size, low))


def render(scene: Scene, rng: np.random.Generator, look: ShiftConfig = SOURCE_LOOK) -> np.ndarray:
    """An (H, W, 3) uint8 image: a noisy background (its level drawn per channel, stripes
    on it), objects jittered inside their cells, then the image's contrast."""
    level = _uniform(rng, look.background_low, look.background_high, 3)
    img = rng.normal(level, look.noise_std, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    if look.texture_amplitude > 0:
        angle = rng.uniform(0.0, math.pi)
        frequency = _uniform(rng, look.texture_frequency_low, look.texture_frequency_high)
        phase, tint = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.0, 1.0, 3)
        stripes = np.sin(frequency * (_XX * math.cos(angle) + _YY * math.sin(angle)) + phase)
        img += (look.texture_amplitude * stripes[..., None] * tint).astype(np.float32)
    cell = IMAGE_SIZE / GRID
    for obj in scene:
        row, col = divmod(obj.cell, GRID)
        r = SIZES[obj.size]
        slack = max(0.0, cell / 2 - r - 0.5)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        colour = np.asarray(COLOURS[obj.colour], np.float32) + rng.normal(0.0, look.colour_jitter_std, 3)
        img[_shape_mask(obj.shape, cy, cx, r)] = colour
    contrast = _uniform(rng, look.contrast_low, look.contrast_high)
    if contrast != 1.0:
        img = 128.0 + (img - 128.0) * np.float32(contrast)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class SceneSplit:
    images: np.ndarray  # (n, H, W, 3) uint8
    captions: list[list[str]]  # n lists of CAPTIONS_PER_IMAGE captions
    scenes: list[Scene]


def generate(n_images: int, objects: tuple[int, int], seed: int, exclude: set[Scene] | None = None) -> SceneSplit:
    """``n_images`` scenes with ``objects[0]..objects[1]`` objects each, unique and not in
    ``exclude`` (pass the scenes of other splits to keep splits disjoint; they are added)."""
    rng = np.random.default_rng(seed)
    seen = exclude if exclude is not None else set()
    scenes: list[Scene] = []
    while len(scenes) < n_images:
        scene = random_scene(rng, int(rng.integers(objects[0], objects[1] + 1)))
        if scene in seen:
            continue
        seen.add(scene)
        scenes.append(scene)
    images = np.stack([render(s, rng) for s in scenes]) if scenes else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return SceneSplit(images, [captions(s, rng) for s in scenes], scenes)


def generate_source(n_images: int, seed: int) -> SceneSplit:
    """Single-object scenes with repeats allowed (only 864 distinct ones exist): the
    pretraining distribution. Repeats differ in jitter, noise and caption wording."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, 1) for _ in range(n_images)]
    images = np.stack([render(s, rng) for s in scenes])
    return SceneSplit(images, [captions(s, rng) for s in scenes], scenes)


TARGET_OBJECTS = (2, 3)


def target_splits(seed: int, sizes: dict[str, int]) -> dict[str, SceneSplit]:
    """The suite's splits, mutually disjoint. Test, then val, then train, each from its
    own derived seed, so that resizing the training split leaves val and test unchanged."""
    taken: set[Scene] = set()
    order = [s for s in ("test", "val", "train") if s in sizes]
    return {name: generate(sizes[name], TARGET_OBJECTS, seed * 1000 + i, taken) for i, name in enumerate(order)}


def single_object_scenes() -> list[Scene]:
    """Every single-object scene (6 shapes x 8 colours x 2 sizes x 9 cells = 864), in a
    fixed order."""
    return [
        (SceneObject(cell, shape, colour, size),)
        for cell, shape, colour, size in itertools.product(range(GRID * GRID), SHAPES, COLOURS, SIZES)
    ]


def shifted_splits(seed: int, sizes: dict[str, int], look: ShiftConfig) -> dict[str, SceneSplit]:
    """The `shifted` target's splits: test, then val, are distinct single-object scenes
    from a seeded shuffle of all of them; train draws its images, with repeats, from the
    scenes left, so val and test hold attribute combinations training never shows. Which
    scenes, their captions and their pixels come from separate random streams: the shift
    (``look``) changes the pixels and nothing else, and the training split's size leaves
    val and test as they are."""
    pool = single_object_scenes()
    order = np.random.default_rng([seed, 0]).permutation(len(pool))
    n_held = sizes.get("test", 0) + sizes.get("val", 0)
    if n_held >= len(pool):
        raise ValueError(f"{n_held} test and val scenes leave none of the {len(pool)} single-object scenes for training")
    held = {"test": order[: sizes.get("test", 0)], "val": order[sizes.get("test", 0) : n_held]}
    rest = order[n_held:]
    out = {}
    for i, name in enumerate(s for s in ("test", "val", "train") if s in sizes):
        picks = held[name] if name != "train" else rest[np.random.default_rng([seed, 1]).integers(len(rest), size=sizes["train"])]
        chosen = [pool[j] for j in picks]
        caption_rng, pixel_rng = np.random.default_rng([seed, 2, i]), np.random.default_rng([seed, 3, i])
        images = np.stack([render(s, pixel_rng, look) for s in chosen]) if chosen else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        out[name] = SceneSplit(images, [captions(s, caption_rng) for s in chosen], chosen)
    return out
