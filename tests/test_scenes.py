"""The embedded generator: retrieval is well posed and every word is known."""

import dataclasses
import hashlib
import re

import numpy as np
import pytest

from petlbench.config import ShiftConfig
from petlbench.data import scenes
from petlbench.models import embedded
from petlbench.models.resolve import resolve


@pytest.fixture(scope="module")
def splits():
    return scenes.target_splits(0, {"train": 400, "val": 150, "test": 150})


CELL_OF = {name: cell for cell, names in enumerate(scenes.CELL_NAMES) for name in names}
SIZE_OF = {syn: size for size, syns in scenes.SIZE_SYNONYMS.items() for syn in syns}


def _alternatives(words) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


OBJECT = re.compile(
    rf"\b({_alternatives(SIZE_OF)}) ({_alternatives(scenes.COLOURS)}) ({_alternatives(scenes.SHAPES)}) (?:in|at) the ({_alternatives(CELL_OF)})(?= and| ,| is|$)"
)


def _parse(caption: str) -> set[tuple[int, str, str, str]]:
    """Read the objects back out of a caption with a regex built from the word lists:
    an independent check that the caption names exactly the scene's objects."""
    return {(CELL_OF[c], shape, colour, SIZE_OF[s]) for s, colour, shape, c in OBJECT.findall(caption)}


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


# ------------------------------------------------------------------ the shifted (near) target

NEAR_SIZES = {"train": 1500, "val": 100, "test": 500}


@pytest.fixture(scope="module")
def near():
    return scenes.shifted_splits(0, NEAR_SIZES, ShiftConfig())


def test_the_default_look_draws_the_pixels_the_records_were_made_from():
    """The multi-object target and the source, drawn before the shift settings existed:
    the digest of their bytes then (the results in results/ were produced from them)."""
    digest = hashlib.sha256()
    far = scenes.target_splits(0, {"train": 300, "val": 50, "test": 50})
    source = scenes.generate_source(200, 0)
    for split in (far["test"], far["val"], far["train"], source):
        digest.update(split.images.tobytes())
        digest.update("".join(c for caps in split.captions for c in caps).encode())
    assert digest.hexdigest() == "6567a947e20d7fe669644cf8ebb52277d5f714b1e0385f14b40fdcca433b3e22"


def test_there_are_864_single_object_scenes_all_distinct():
    pool = scenes.single_object_scenes()
    expected = len(scenes.SHAPES) * len(scenes.COLOURS) * len(scenes.SIZES) * scenes.GRID**2
    assert len(pool) == len(set(pool)) == expected == 864 and all(len(s) == 1 for s in pool)


def test_shifted_splits_share_no_scene_and_train_repeats_only_the_scenes_left(near):
    test, val, train = (set(near[name].scenes) for name in ("test", "val", "train"))
    assert len(near["test"].scenes) == len(test) == 500 and len(near["val"].scenes) == len(val) == 100
    assert not (test & val or test & train or val & train)
    assert train <= set(scenes.single_object_scenes()) - test - val
    assert len(near["train"].scenes) == 1500 and len(train) > 200  # drawn with repeats from the 264 left


def test_every_shifted_caption_parses_back_to_its_scene_and_none_repeats_in_val_or_test(near):
    for split in near.values():
        for scene, caps in zip(split.scenes, split.captions, strict=True):
            assert len(set(caps)) == scenes.CAPTIONS_PER_IMAGE
            for caption in caps:
                assert _parse(caption) == {(o.cell, o.shape, o.colour, o.size) for o in scene}, caption
    for name in ("val", "test"):
        owner = {}
        for i, caps in enumerate(near[name].captions):
            for c in caps:
                assert owner.setdefault(c, i) == i


@pytest.mark.slow
def test_no_caption_can_describe_two_single_object_scenes():
    """Sixty caption draws of every single-object scene: each caption reads back to its
    own scene only, so no caption can be shared by two scenes of any split."""
    rng = np.random.default_rng(0)
    owner: dict[str, scenes.Scene] = {}
    for scene in scenes.single_object_scenes():
        truth = {(o.cell, o.shape, o.colour, o.size) for o in scene}
        for _ in range(60):
            for caption in scenes.captions(scene, rng):
                assert owner.setdefault(caption, scene) == scene
                assert _parse(caption) == truth
    assert len(owner) > 864 * 20  # the draws did reach many wordings


SHIFT_FIELDS = [f.name for f in dataclasses.fields(ShiftConfig)]
# a changed value for each setting, within its bounds and its pair's order
CHANGED = {
    "background_low": 10.0,
    "background_high": 200.0,
    "texture_amplitude": 60.0,
    "texture_frequency_low": 0.05,
    "texture_frequency_high": 1.5,
    "noise_std": 2.0,
    "colour_jitter_std": 40.0,
    "contrast_low": 0.5,
    "contrast_high": 1.6,
}


@pytest.mark.parametrize("name", SHIFT_FIELDS)
def test_each_shift_setting_changes_the_pixels_and_nothing_else(near, name):
    sizes = {"train": 40, "val": 100, "test": 500}
    base = scenes.shifted_splits(0, sizes, ShiftConfig())
    other = scenes.shifted_splits(0, sizes, dataclasses.replace(ShiftConfig(), **{name: CHANGED[name]}))
    for split in sizes:
        assert other[split].scenes == base[split].scenes and other[split].captions == base[split].captions
        assert (other[split].images != base[split].images).any()
    assert base["test"].scenes == near["test"].scenes and (base["test"].images == near["test"].images).all()


def test_the_shift_is_what_the_settings_say():
    """The source's look as shift settings draws the source's background (level 30, noise
    8); the default shift draws backgrounds whose level lies in [40, 120]."""
    empty: scenes.Scene = ()
    rng = np.random.default_rng(0)
    source = np.stack([scenes.render(empty, rng) for _ in range(50)]).astype(float)
    assert abs(source.mean() - 30) < 0.5 and abs(source.std() - 8) < 0.5
    shifted = np.stack(
        [
            scenes.render(empty, rng, dataclasses.replace(ShiftConfig(), texture_amplitude=0.0, contrast_high=0.8, contrast_low=0.8))
            for _ in range(200)
        ]
    ).astype(float)
    levels = (shifted.mean(axis=(1, 2)) - 128) / 0.8 + 128  # per image and channel, the contrast undone
    assert levels.min() > 38 and levels.max() < 122 and levels.max() - levels.min() > 60


def test_val_and_test_do_not_depend_on_the_training_split_size():
    a = scenes.shifted_splits(2, {"train": 30, "val": 20, "test": 40}, ShiftConfig())
    b = scenes.shifted_splits(2, {"train": 90, "val": 20, "test": 40}, ShiftConfig())
    for split in ("val", "test"):
        assert a[split].scenes == b[split].scenes and a[split].captions == b[split].captions
        assert (a[split].images == b[split].images).all()
    with pytest.raises(ValueError, match="leave none of the 864"):
        scenes.shifted_splits(0, {"train": 10, "val": 364, "test": 500}, ShiftConfig())
