"""The embedded generator: retrieval is well posed and every word is known."""

import re

import numpy as np
import pytest

from petlbench.data import scenes
from petlbench.models import embedded
from petlbench.models.resolve import resolve


@pytest.fixture(scope="module")
def splits():
    return scenes.target_splits(0, {"train": 400, "val": 150, "test": 150})


def _parse(caption: str) -> set[tuple[int, str, str, str]]:
    """Read the objects back out of a caption with a regex built from the word lists:
    an independent check that the caption names exactly the scene's objects."""
    cell_of = {name: cell for cell, names in enumerate(scenes.CELL_NAMES) for name in names}
    size_of = {syn: size for size, syns in scenes.SIZE_SYNONYMS.items() for syn in syns}
    alt = lambda words: "|".join(sorted(map(re.escape, words), key=len, reverse=True))  # noqa: E731
    pattern = re.compile(
        rf"\b({alt(size_of)}) ({alt(scenes.COLOURS)}) ({alt(scenes.SHAPES)}) (?:in|at) the ({alt(cell_of)})(?= and| ,| is|$)"
    )
    return {(cell_of[c], shape, colour, size_of[s]) for s, colour, shape, c in pattern.findall(caption)}


def test_each_caption_describes_exactly_its_own_scene(splits):
    for split in splits.values():
        for scene, caps in zip(split.scenes, split.captions, strict=True):
            truth = {(o.cell, o.shape, o.colour, o.size) for o in scene}
            assert len(caps) == scenes.CAPTIONS_PER_IMAGE
            for caption in caps:
                assert _parse(caption) == truth, caption


def test_scenes_unique_within_and_across_splits(splits):
    all_scenes = [s for split in splits.values() for s in split.scenes]
    assert len(all_scenes) == len(set(all_scenes))
    # so no caption string (which determines its scene) is shared by two images of a split
    for split in splits.values():
        owner = {}
        for i, caps in enumerate(split.captions):
            for c in caps:
                assert owner.setdefault(c, i) == i


def test_target_scenes_have_two_or_three_objects_and_paraphrases_differ(splits):
    for scene, caps in zip(splits["test"].scenes, splits["test"].captions, strict=True):
        assert 2 <= len(scene) <= 3
        assert len({c for c in caps}) == scenes.CAPTIONS_PER_IMAGE


def test_generation_is_deterministic_and_val_test_independent_of_train_size():
    a = scenes.target_splits(3, {"train": 50, "val": 20, "test": 20})
    b = scenes.target_splits(3, {"train": 90, "val": 20, "test": 20})
    assert a["test"].scenes == b["test"].scenes and a["val"].scenes == b["val"].scenes
    assert (a["test"].images == b["test"].images).all()
    assert a["test"].captions == b["test"].captions


@pytest.mark.parametrize("source", ["built", "shipped"])
def test_tokenizer_knows_every_word(splits, source):
    from transformers import AutoTokenizer

    tok = embedded.build_tokenizer() if source == "built" else AutoTokenizer.from_pretrained(resolve("embedded-clip"))
    captions = [c for split in splits.values() for caps in split.captions for c in caps]
    captions += [c for caps in scenes.generate_source(200, 0).captions for c in caps]
    ids = tok(captions, padding="max_length", max_length=embedded.TEXT_LENGTH)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    assert all(len(row) == embedded.TEXT_LENGTH and embedded.EOS_ID in row for row in ids)  # nothing truncated
    assert {w for c in captions for w in c.split()} <= set(scenes.vocabulary())


def test_suite_text_length_fits_the_longest_caption_exactly():
    """Three objects in corner cells (two-word names in every synonym) with a two-word
    relation give the longest captions: they must fit the suite's text length, untruncated."""
    from petlbench.config import load_suite

    length = load_suite("vl-retrieval").data.text_length
    tok = embedded.build_tokenizer()
    worst = tuple(scenes.SceneObject(cell, "triangle", "purple", "small") for cell in (0, 2, 8))
    lengths = [len(tok(c)["input_ids"]) for seed in range(20) for c in scenes.captions(worst, np.random.default_rng(seed))]
    assert max(lengths) == length
