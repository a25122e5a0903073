"""Suite and method configuration: YAML loading, `--set` overrides, validation, hashes.

A suite YAML fixes everything that must be identical across methods; a method YAML (its
file name is the variant name) names a registered method and holds only that method's
hyperparameters. Both are validated against dataclass schemas before anything is built;
every error names the file (or the `--set` override), the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import os
import reprlib
import stat
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml

from petlbench.units import GiB

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A bad configuration: reported to the user without a traceback (exit code 2).
    ``key``: the dotted key at fault, where one is (lets an override claim the error)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class OutputError(Exception):
    """A record, report or figure could not be written (a full disk, a folder gone): exit
    code 1 with one line; a sweep stops cleanly, its finished records in place."""


INT64 = (-(2**63), 2**63 - 1)
SEED_RANGE = (0, 2**32 - 1)  # what every generator a run seeds accepts (torch, numpy)


def rule(
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_items: int | None = None,
    nonempty: bool | None = None,
    hashed: bool | HashedUnlessDefault = True,
) -> dict[str, Any]:
    """Field metadata: the help text and the bounds `build` enforces, declared beside the
    field so that a new field states its own (tests check that every number, list and
    string field does). Numeric bounds apply to a number or to each item of a list;
    ``min_items`` to a list; ``nonempty`` to a string (or to each string of a list).
    ``hashed``: whether `suite_hash` covers the field (`hashed`)."""
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt, "min_items": min_items, "nonempty": nonempty}
    return {"help": help, **{k: v for k, v in bounds.items() if v is not None}, **({} if hashed is True else {"hashed": hashed})}


@dataclass(frozen=True)
class HashedUnlessDefault:
    """The hash rule of a setting added after records existed: `suite_hash` covers it only
    while the setting at ``path`` (dotted, from the section holding the field; the field
    itself by default) is not at its default, so that every earlier record keeps its hash."""

    path: str = ""


def hashed(meta: dict[str, Any]) -> bool | HashedUnlessDefault:
    """A field's hash rule, from its metadata: True (always covered), False (a setting that
    cannot change a run's result: where the data lives, how many processes load it; left
    out, so that records of the same data set from two machines share a table) or
    `HashedUnlessDefault`."""
    return meta.get("hashed", True)


HASHED_UNLESS_DEFAULT = {"hashed": HashedUnlessDefault()}


@dataclass
class ModelConfig:
    name: str = field(metadata=rule("shipped model name or local checkpoint folder", nonempty=True))
    attn_implementation: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "attention kernel, pinned for every method"})
    allow_pickle: bool = field(
        default=False,
        metadata=rule(
            "load pickled weights (pytorch_model.bin) where a checkpoint has no safetensors; unpickling can run code", hashed=False
        ),
    )


@dataclass
class ShiftConfig:
    """The visual domain shift of the generated `shifted` target (`data.target`): how its
    single-object scenes are drawn, against the source's look (`scenes.SOURCE_LOOK`) that
    the shipped model was pretrained on. The background's brightness sets the difficulty."""

    background_low: float = field(
        default=40.0, metadata=rule("each image's background: every channel uniform in [low, high] (the source: 30)", ge=0, le=255)
    )
    background_high: float = field(default=120.0, metadata=rule("see background_low", ge=0, le=255))
    texture_amplitude: float = field(
        default=25.0, metadata=rule("stripes over the background: amplitude (random angle, phase and tint; 0: none)", ge=0, le=255)
    )
    texture_frequency_low: float = field(
        default=0.15, metadata=rule("stripe frequency in rad/px, uniform in [low, high]", ge=0, le=math.pi)
    )
    texture_frequency_high: float = field(default=0.6, metadata=rule("see texture_frequency_low", ge=0, le=math.pi))
    noise_std: float = field(default=14.0, metadata=rule("the background's pixel noise (the source: 8)", ge=0, le=255))
    colour_jitter_std: float = field(default=14.0, metadata=rule("per-object colour jitter (the source: 8)", ge=0, le=255))
    contrast_low: float = field(
        default=0.8, metadata=rule("each image's contrast c, uniform in [low, high]: pixels become 128 + (x - 128) c", ge=0, le=10)
    )
    contrast_high: float = field(default=1.1, metadata=rule("see contrast_low", ge=0, le=10))

    def __post_init__(self):
        for name in ("background", "texture_frequency", "contrast"):
            low, high = getattr(self, f"{name}_low"), getattr(self, f"{name}_high")
            if low > high:
                raise ConfigError(f"{low:g} exceeds data.shift.{name}_high = {high:g}", key=f"data.shift.{name}_low")


# The generated targets (`data.target`); the first is the default.
SCENE_TARGETS = ("multi-object", "shifted")


@dataclass
class DataConfig:
    kind: Literal["scenes", "karpathy", "jsonl"] = field(
        metadata={"help": "'scenes': the embedded generator; 'karpathy': a Karpathy-split JSON (Flickr30K, COCO); 'jsonl': a manifest"}
    )
    target: Literal[SCENE_TARGETS] = field(
        default=SCENE_TARGETS[0],
        metadata={
            "help": "scenes: 'multi-object' (far transfer: 2-3 objects, the source's look) or 'shifted' "
            "(near transfer: single objects under the visual shift data.shift, unseen attribute combinations in val and test)",
            **HASHED_UNLESS_DEFAULT,
        },
    )
    shift: ShiftConfig = field(
        default_factory=ShiftConfig,
        metadata={"help": "scenes, target 'shifted': the domain shift", "hashed": HashedUnlessDefault("target")},
    )
    root: str = field(
        default="",
        metadata=rule("karpathy / jsonl: the folder holding the annotation file and the images folder", nonempty=False, hashed=False),
    )
    annotations: str = field(default="", metadata=rule("karpathy / jsonl: the annotation file, relative to data.root", nonempty=False))
    images: str = field(default="", metadata=rule("karpathy / jsonl: the images folder, relative to data.root", nonempty=False))
    seed: int = field(
        default=0,
        metadata=rule("scenes: generator seed (the data set is identical for every run seed)", ge=SEED_RANGE[0], le=SEED_RANGE[1]),
    )
    train_images: int = field(
        default=6000, metadata=rule("scenes: images generated; karpathy / jsonl: the first N (0: all)", ge=0, le=10**8)
    )
    val_images: int = field(default=500, metadata=rule("as train_images, for the validation split", ge=0, le=10**8))
    test_images: int = field(default=1000, metadata=rule("as train_images, for the test split", ge=0, le=10**8))
    captions_per_image: int = field(default=5, metadata=rule("karpathy / jsonl: captions kept per image (the first ones)", ge=1, le=1000))
    text_length: int = field(default=40, metadata=rule("tokens per caption (padded)", ge=1, le=100_000))
    workers: int = field(
        default=4, metadata=rule("karpathy / jsonl: DataLoader worker processes (0: load in the main process)", ge=0, le=1024, hashed=False)
    )

    def __post_init__(self):
        files = self.kind != "scenes"
        for split in ("train", "val", "test"):
            if not files and getattr(self, f"{split}_images") < 1:
                raise ConfigError("at least 1 (0 means 'all' only for data read from files)", key=f"data.{split}_images")
        for key in ("root", "annotations", "images"):
            if files and not getattr(self, key):
                raise ConfigError(f"required for data.kind {self.kind!r} (a path)", key=f"data.{key}")
            if not files and getattr(self, key):
                raise ConfigError("only for data read from files (data.kind karpathy or jsonl)", key=f"data.{key}")
        if not files and self.captions_per_image != 5:
            raise ConfigError("the generated scenes have 5 captions per image", key="data.captions_per_image")
        if self.target != SCENE_TARGETS[0] and files:
            raise ConfigError("only for the generated scenes (data.kind scenes)", key="data.target")
        if self.target != "shifted" and self.shift != ShiftConfig():
            raise ConfigError("only for data.target shifted", key="data.shift")


@dataclass
class TextDataConfig:
    """The data section of the text-to-text task (`task: glue`): which classification tasks,
    from the embedded generator or from the GLUE distribution's files, cut to what lengths."""

    kind: Literal["generated", "glue"] = field(
        metadata={
            "help": "'generated': the embedded GLUE-shaped tasks over the scene vocabulary; 'glue': the GLUE distribution's "
            "TSV folders under data.root"
        }
    )
    tasks: list[str] = field(
        metadata=rule(
            "the tasks trained together and judged one by one (petlbench/tasks/glue: the names of each kind)", min_items=1, nonempty=True
        )
    )
    root: str = field(
        default="",
        metadata=rule(
            "glue: the folder holding one folder per task as GLUE names them (CoLA, SST-2, MRPC, ...)", nonempty=False, hashed=False
        ),
    )
    seed: int = field(
        default=0,
        metadata=rule("generated: generator seed (the data set is identical for every run seed)", ge=SEED_RANGE[0], le=SEED_RANGE[1]),
    )
    train_examples: int = field(
        default=0, metadata=rule("per task: generated: examples made; glue: the first N of the training split (0: all)", ge=0, le=10**8)
    )
    val_examples: int = field(default=0, metadata=rule("as train_examples, for the validation split", ge=0, le=10**8))
    test_examples: int = field(default=0, metadata=rule("as train_examples, for the test split", ge=0, le=10**8))
    text_length: int = field(default=128, metadata=rule("source tokens per example (truncated, then padded)", ge=1, le=100_000))
    target_length: int = field(
        default=0, metadata=rule("target tokens per example (0: the longest label's, end token included)", ge=0, le=100_000)
    )

    def __post_init__(self):
        for split in ("train", "val", "test"):
            if self.kind == "generated" and getattr(self, f"{split}_examples") < 1:
                raise ConfigError("at least 1 (0 means 'all' only for data read from files)", key=f"data.{split}_examples")
        if self.kind == "glue" and not self.root:
            raise ConfigError("required for data.kind 'glue' (a path)", key="data.root")
        if self.kind == "generated" and self.root:
            raise ConfigError("only for data read from files (data.kind glue)", key="data.root")
        if len(set(self.tasks)) < len(self.tasks):
            raise ConfigError("a task is named twice", key="data.tasks")


# The target length of an estimate whose suite leaves it to the tokenizer (`target_length`
# 0): an estimate has none. A label word of up to three tokens and the end token.
ESTIMATE_TARGET_LENGTH = 4

# The data section's schema of each task whose data is not image-text (`DataConfig`).
DATA_SCHEMAS: dict[str, type] = {"glue": TextDataConfig}


def data_schema(suite: Any) -> type:
    """The schema of the data section of ``suite`` (a suite file's mapping), by its task."""
    task = suite.get("task", DEFAULT_TASK) if isinstance(suite, dict) else DEFAULT_TASK
    return DATA_SCHEMAS.get(task, DataConfig) if isinstance(task, str) else DataConfig


# Training precisions; `precision.autocast` is the one place that maps them to an autocast context.
Precision = Literal["fp32", "bf16"]


@dataclass
class TrainConfig:
    batch_size: int = field(metadata=rule("training examples per step (image-caption pairs, source-target pairs)", ge=1, le=2**20))
    steps: int = field(metadata=rule("training steps, the warm-up step included", ge=2, le=10**9))
    warmup_steps: int = field(default=0, metadata=rule("steps of linear learning-rate warm-up", ge=0, le=10**9))
    optimizer: Literal["adamw"] = "adamw"
    optimizer_impl: Literal["foreach", "for-loop", "fused"] = field(
        default="foreach", metadata={"help": "AdamW implementation: it changes the memory peak"}
    )
    weight_decay: float = field(default=0.0, metadata=rule("AdamW's decoupled weight decay", ge=0, le=10))
    precision: Precision = field(
        default="fp32",
        metadata={"help": "bf16: forward and loss under torch.autocast (weights, gradients and optimizer state stay fp32)"},
    )
    grad_checkpointing: bool = field(
        default=False,
        metadata={"help": "non-reentrant activation checkpointing of every transformer block (transformers' own mechanism)"},
    )
    head: Literal["frozen", "trainable"] = field(
        default="frozen", metadata={"help": "the towers' final projections, for every method that does not define them itself"}
    )
    temperature: Literal["frozen", "trainable"] = field(default="frozen", metadata={"help": "the logit scale, for every method"})
    measure_steps: int = field(default=2, metadata=rule("steps after the warm-up step whose memory peak is measured", ge=1, le=10**9))

    def __post_init__(self):
        if self.measure_steps > self.steps - 1:
            raise ConfigError(
                f"{self.measure_steps} measured steps do not fit after the warm-up step in train.steps = {self.steps}",
                key="train.measure_steps",
            )


@dataclass
class EvalConfig:
    split: Literal["val", "test"] = field(default="test", metadata={"help": "'val' for learning-rate sweeps, 'test' for reported numbers"})
    batch_size: int = field(default=256, metadata=rule("images or captions per evaluation forward", ge=1, le=2**20))
    folds: int = field(
        default=1, metadata=rule("also report the mean over this many equal folds of the split (COCO: 5 folds of 1K)", ge=1, le=1000)
    )


BUDGET_KNOBS = Literal["batch", "grad_checkpointing"]


@dataclass
class BudgetConfig:
    """How a memory budget (`petlbench run --budget`) turns into each variant's batch size
    and schedule. Off (``bytes`` 0) unless a budget is given; hashed only when on, so that a
    run without a budget keeps the hashes it always had."""

    bytes: int = field(default=0, metadata=rule("the budget in bytes (`run --budget`; 0: none)", ge=0, le=2**50))
    min_batch_size: int = field(
        default=8, metadata=rule("the smallest training batch a method may take: below it, over_budget", ge=1, le=2**20)
    )
    max_batch_size: int = field(
        default=512,
        metadata=rule("the largest training batch searched (caps the RAM of a CPU run: full at 512 needs about 1.6 GiB)", ge=1, le=2**20),
    )
    batch_multiple: int = field(default=8, metadata=rule("the chosen batch is rounded down to a multiple of this", ge=1, le=2**20))
    schedule: Literal["equal_samples", "equal_steps"] = field(
        default="equal_samples",
        metadata={
            "help": "equal_samples: every method sees the suite's steps x batch_size training samples (to within one batch); "
            "equal_steps: the suite's steps at every batch size (a larger batch also sees more data)"
        },
    )
    lr_scaling: Literal["none", "sqrt", "linear"] = field(
        default="none", metadata={"help": "the variant's learning rate times (batch / suite batch) ** 0, 1/2 or 1"}
    )
    knobs: list[BUDGET_KNOBS] = field(
        default_factory=lambda: ["batch"],
        metadata=rule("what a method may change to fit: the batch, and activation checkpointing where it buys a larger batch", min_items=1),
    )
    cuda_headroom_bytes: int = field(
        default=GiB,
        metadata=rule(
            "CUDA: left out of the budget for what the estimate does not model (the CUDA context, about 0.5 GiB, and the caching allocator's slack)",
            ge=0,
            le=2**50,
        ),
    )

    def __post_init__(self):
        if self.min_batch_size > self.max_batch_size:
            raise ConfigError(f"{self.min_batch_size} exceeds budget.max_batch_size = {self.max_batch_size}", key="budget.min_batch_size")
        if self.batch_multiple > self.max_batch_size:
            raise ConfigError(f"{self.batch_multiple} exceeds budget.max_batch_size = {self.max_batch_size}", key="budget.batch_multiple")
        if "batch" not in self.knobs:
            raise ConfigError("must include 'batch' (the batch size is what a budget chooses)", key="budget.knobs")
        if len(set(self.knobs)) < len(self.knobs):
            raise ConfigError("a knob is named twice", key="budget.knobs")


# The task of a suite that names none: the first one, which every earlier record ran.
DEFAULT_TASK = "retrieval"


@dataclass
class SuiteConfig:
    name: str = field(metadata=rule("the suite's name (records and tables show it)", nonempty=True))
    version: int = field(metadata=rule("bumped when the suite's meaning changes", ge=1, le=10**6))
    model: ModelConfig
    data: DataConfig | TextDataConfig = field(
        metadata={"help": "what the task learns from: its schema is the task's (`data_schema`)", "schema": data_schema}
    )
    train: TrainConfig
    task: str = field(
        default=DEFAULT_TASK,
        metadata=rule(
            "what is learned and how it is judged: a registered task (`petlbench list`)", nonempty=True, hashed=HashedUnlessDefault()
        ),
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata=rule("default run seeds", ge=SEED_RANGE[0], le=SEED_RANGE[1], min_items=1, hashed=False)
    )
    variants: list[str] = field(
        default_factory=list,
        metadata=rule(
            "the variants a run without --variants runs (empty: one per method, methods/<method>.yaml)",
            nonempty=True,
            min_items=0,
            hashed=False,
        ),
    )
    description: str = field(default="", metadata=rule("one line for `petlbench list`", nonempty=False, hashed=False))
    # not hashed: a run's learning rate is in its variant's config, which `run_hash` covers
    learning_rates: dict[str, float] = field(
        default_factory=dict,
        metadata={
            **rule(
                "variant -> peak learning rate from this suite's validation sweep, in place of the variant file's lr "
                "(a --set method.lr wins)",
                gt=0,
                le=100,
            ),
            "hashed": False,
        },
    )
    budget: BudgetConfig = field(
        default_factory=BudgetConfig,
        metadata={"help": "memory-budget runs (`run --budget`)", "hashed": HashedUnlessDefault("budget.bytes")},
    )


@dataclass(frozen=True)
class RunSettings:
    """What one run executes: the suite's training and evaluation settings and the
    variant's learning rate, or what a memory budget derived from them (`petlbench.budget`).
    Kept apart from the suite, whose hash must not change with a derived value."""

    train: TrainConfig
    eval_batch_size: int
    lr: float

    @classmethod
    def of(cls, suite: SuiteConfig, lr: float) -> RunSettings:
        return cls(suite.train, suite.eval.batch_size, lr)


@dataclass
class MethodConfig:
    """Fields every method has; a method's own config subclasses this."""

    lr: float = field(metadata=rule("peak learning rate (from the suite's validation sweep)", gt=0, le=100))


# --------------------------------------------------------------------------- validation

# Error messages quote a bad value by a short prefix: a value can be huge.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 48
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 4
_SHORT.maxlevel = 2


def short(value: Any) -> str:
    """``value`` as a message quotes it: at most 80 characters."""
    return clip(_SHORT.repr(value))


def clip(text: str, width: int = 80) -> str:
    """``text`` cut to ``width`` characters, for names and arguments a message repeats."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict:
        return f"a mapping of names to {_type_name(typing.get_args(tp)[1])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """``value`` as type ``tp``, or a ConfigError naming the source, the key and what is allowed."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{source}: key '{key}': {short(value)} is not {_type_name(tp)}", key=key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, prefix=f"{key}.")
    if origin is Literal:
        if not isinstance(value, (str, int, float, bool)) or isinstance(value, bool) or value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, typing.get_args(tp)[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        for name in value:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{source}: key '{key}': {short(name)} is not a name", key=key)
        return {name: _coerce(v, typing.get_args(tp)[1], source, f"{key}.{name}") for name, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if not INT64[0] <= value <= INT64[1]:
            raise ConfigError(f"{source}: key '{key}': {short(value)} is beyond the 64-bit integer range", key=key)
        return value
    if tp is float:
        # PyYAML reads "1e-3" (no dot) as a string: accept any numeric spelling.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"{source}: key '{key}': {short(value)} is not a finite number", key=key)
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{source}: key '{key}': {short(value)} is not valid UTF-8 text", key=key) from None
        return text
    raise TypeError(f"unsupported config type {tp}")


def _bound_error(meta: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` breaks the bounds in field metadata ``meta`` (None when it keeps them)."""
    if isinstance(value, list):
        if len(value) < meta.get("min_items", 0):
            return f"needs at least {meta['min_items']} item{'s' if meta['min_items'] > 1 else ''}"
        for i, item in enumerate(value):
            if why := _bound_error({k: v for k, v in meta.items() if k != "min_items"}, item):
                return f"item {i} ({short(item)}) {why}"
        return None
    if isinstance(value, dict):
        for name, item in value.items():
            if why := _bound_error(meta, item):
                return f"{short(name)}: {short(item)} {why}"
        return None
    if isinstance(value, str):
        return "must not be empty" if meta.get("nonempty") and not value.strip() else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        checks = {
            "ge": (operator.ge, "at least"),
            "gt": (operator.gt, "above"),
            "le": (operator.le, "at most"),
            "lt": (operator.lt, "below"),
        }
        for name, (holds, words) in checks.items():
            if name in meta and not holds(value, meta[name]):
                return f"must be {words} {meta[name]:g}" if isinstance(meta[name], float) else f"must be {words} {meta[name]}"
    return None


def build(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown and missing keys and
    values outside the bounds each field declares (`rule`)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = ", ".join(fields)
    if not isinstance(data, dict):
        where = f"key '{prefix[:-1]}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping with keys {allowed}, got {short(data)}")
    unknown = sorted(short(k) if not isinstance(k, str) else k for k in data if k not in fields)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}'; allowed keys: {allowed}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name in data:
            kwargs[name] = _coerce(data[name], _field_type(f, hints[name], data), source, key)
            if why := _bound_error(f.metadata, kwargs[name]):
                raise ConfigError(f"{source}: key '{key}': {short(data[name])} {why}", key=key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{key}' ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a check across fields in the schema's __post_init__
        raise ConfigError(f"{source}: key '{exc.key}': {exc}", key=exc.key) from None


def _field_type(f: dataclasses.Field, hint: Any, mapping: Any) -> Any:
    """The type field ``f`` is read as: its type hint, or what its ``schema`` picks from the
    whole ``mapping`` it is in (a suite's data section, by the suite's task)."""
    return f.metadata["schema"](mapping) if "schema" in f.metadata else hint


def check_value(cls: type, name: str, value: Any, source: str) -> Any:
    """``value`` for field ``name`` of ``cls``, coerced and checked against its bounds, as
    `build` would (for values that arrive outside a file, e.g. `--seeds`)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    coerced = _coerce(value, typing.get_type_hints(cls)[name], source, name)
    if why := _bound_error(f.metadata, coerced):
        raise ConfigError(f"{source}: {short(value)} {why}")
    return coerced


# --------------------------------------------------------------------------- loading

# A suite or method file is a few hundred bytes; anything this large is not one.
MAX_YAML_BYTES = 1 << 20


class _Refused(yaml.YAMLError):
    """YAML that `_StrictLoader` refuses, with the line."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build objects), refusing aliases — an alias can
    expand a small file into gigabytes (billion laughs), and config files need none — and
    duplicate keys, where YAML would silently keep the last."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: alias *{event.anchor}: aliases are not allowed (write the value out)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _Refused(f"line {line}: duplicate key {short(key)} (first on line {seen[key]})")
            except TypeError:
                raise _Refused(f"line {line}: a key must be a plain value, not {short(key)}") from None
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``text`` parsed by `_StrictLoader`; raises `yaml.YAMLError`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except ValueError as exc:  # Python refuses integers of over 4,300 digits
        raise _Refused(f"a value YAML cannot read: {exc}") from None


def read_yaml(path: Path) -> dict:
    try:
        status = path.stat()
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(status.st_mode):  # a FIFO or a device: reading it could block forever
            raise ConfigError(f"{path}: not a regular file")
        if status.st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {status.st_size:,} bytes, larger than a config file can be ({MAX_YAML_BYTES:,})")
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except OSError as exc:  # a name too long, an I/O error
        raise ConfigError(f"{clip(str(path))}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except _Refused as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:  # PyYAML's message spans lines (marks, carets): one line here
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# Folders of a user's suites and variants, found by name beside the shipped ones.
PATH_VARIABLE = "PETLBENCH_PATH"


def shipped_folder(kind: str) -> Path:
    """The folder of the YAML files of ``kind`` ('suites' or 'methods') shipped with
    petlbench. Installed from a wheel, they are package data (`petlbench/_shipped/<kind>/`,
    mapped from the top-level folders by setup.py; a Path: petlbench is installed as files,
    never zipped); a checkout (an editable install, PYTHONPATH) has no copy there and reads
    the top-level folder."""
    packaged = resources.files("petlbench") / "_shipped" / kind
    return packaged if packaged.is_dir() else PROJECT_ROOT / kind


def available(kind: str) -> list[Path]:
    """The YAML files of ``kind`` shipped with petlbench."""
    return sorted(shipped_folder(kind).glob("*.yaml"), key=lambda p: p.stem)


def user_folders() -> list[Path]:
    """The folders `PATH_VARIABLE` names (separated by os.pathsep, empty entries ignored),
    each holding a `suites/` folder, a `methods/` folder or both."""
    folders = []
    for entry in filter(None, os.environ.get(PATH_VARIABLE, "").split(os.pathsep)):
        if not os.path.isdir(entry):
            raise ConfigError(f"{PATH_VARIABLE}: {clip(entry)}: {'not a folder' if os.path.exists(entry) else 'no such folder'}")
        if not any(os.path.isdir(os.path.join(entry, kind)) for kind in ("suites", "methods")):
            raise ConfigError(f"{PATH_VARIABLE}: {clip(entry)}: holds neither a suites/ nor a methods/ folder")
        folders.append(Path(entry))
    return folders


class Folder(NamedTuple):
    """A folder whose YAML files are known by name: where it comes from ('shipped' or
    `PATH_VARIABLE`), its path and its YAML files."""

    origin: str
    path: Path
    files: list[Path]


def catalogue(kind: str) -> list[Folder]:
    """The folders whose YAML files of ``kind`` are known by name (the file name without
    .yaml): the shipped one, then the ``kind`` subfolder of each `PATH_VARIABLE` folder that
    has one. A name means one file: records, reports and baselines know a suite or a variant
    by its name alone, so a second file of a name already taken (a shipped one among them)
    is an error naming both, never a silent override."""
    folders = {shipped_folder(kind).resolve(): "shipped"}
    for folder in user_folders():
        if (folder / kind).is_dir():
            folders.setdefault((folder / kind).resolve(), PATH_VARIABLE)  # a folder named twice is read once
    out, taken = [], {}
    for path, origin in folders.items():
        out.append(Folder(origin, path, sorted(path.glob("*.yaml"), key=lambda p: p.stem)))
        for file in out[-1].files:
            if file.stem in taken:
                raise ConfigError(
                    f"{PATH_VARIABLE}: {kind[:-1]} name {file.stem!r} taken twice, by {taken[file.stem]} and {file}: rename one (a file still runs by its path)"
                )
            taken[file.stem] = file
    return out


def find(kind: str, name_or_path: str) -> Path:
    """The YAML file of ``kind`` that a name on the command line means: a path ending in
    .yaml or .yml as it is, any other a name `catalogue` knows."""
    if Path(name_or_path).suffix in (".yaml", ".yml"):
        return Path(name_or_path)
    known = {path.stem: path for folder in catalogue(kind) for path in folder.files}
    if not name_or_path.strip():
        raise ConfigError(f"an empty {kind[:-1]} name; known: {', '.join(sorted(known))}")
    if name_or_path not in known:
        raise ConfigError(f"unknown {kind[:-1]} {clip(name_or_path)!r}; known: {', '.join(sorted(known))} (or pass a .yaml path)")
    return known[name_or_path]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value parsed as a YAML scalar; the raw text where it is
    not one). An empty value is the empty string, which the schema then judges."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"--set {clip(text)}: expected key.path=value")
    try:
        value = load_yaml(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return  # the file's own malformed section: validation reports it
    node[path[-1]] = value


def load_suite(name_or_path: str, overrides: list[str] = ()) -> SuiteConfig:
    """The validated suite, with every `--set` override outside `method.` applied."""
    path = find("suites", name_or_path)
    data = read_yaml(path)
    overridden: dict[str, str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "method":
            check_override(SuiteConfig, keys, value, f"--set {clip(text)}", data)
            _apply(data, keys, value)
            overridden[".".join(keys)] = f"--set {clip(text)}"
    try:
        return build(SuiteConfig, data, str(path))
    except ConfigError as exc:  # a range error in a value an override set: name the override
        if exc.key not in overridden:
            raise
        raise ConfigError(overridden[exc.key] + str(exc).removeprefix(str(path)), key=exc.key) from None


def check_override(cls: type, keys: list[str], value: Any, source: str, mapping: Any = None) -> None:
    """Validate one `--set` against the schema alone, so that its error names it (``mapping``:
    the file's own mapping, where a section's schema depends on it, `_field_type`)."""
    for i, key in enumerate(keys):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        dotted = ".".join(keys[: i + 1])
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {short(dotted)}; allowed keys: {', '.join(fields)}")
        tp = _field_type(fields[key], typing.get_type_hints(cls)[key], mapping if i == 0 else None)
        if i == len(keys) - 1:
            coerced = _coerce(value, tp, source, dotted)
            if why := _bound_error(fields[key].metadata, coerced):
                raise ConfigError(f"{source}: key '{dotted}': {short(value)} {why}", key=dotted)
        elif dataclasses.is_dataclass(tp):
            cls = tp
        else:
            raise ConfigError(f"{source}: '{dotted}' is not a section")


# --------------------------------------------------------------------------- hashes


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def _at_default(obj: Any, path: str) -> bool:
    """Whether the setting at dotted ``path`` under dataclass ``obj`` is at its default."""
    *parents, name = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    return getattr(obj, name) == _default(type(obj), name)


def _hashed(obj: Any) -> Any:
    """``obj`` as a dict of the fields `suite_hash` covers (each field's `hashed` rule), recursively."""
    if not dataclasses.is_dataclass(obj):
        return obj
    out = {}
    for f in dataclasses.fields(obj):
        rule_ = hashed(f.metadata)
        if rule_ is True or (isinstance(rule_, HashedUnlessDefault) and not _at_default(obj, rule_.path or f.name)):
            out[f.name] = _hashed(getattr(obj, f.name))
    return out


def suite_hash(suite: SuiteConfig) -> str:
    """Covers everything that must be equal for records to share a table: the resolved
    suite as each field's hash rule says (`hashed`): without what cannot change a result
    (the default seed list, the description, where the data lives and how many workers load
    it), and with the settings added after records existed only where they are not at their
    default (the task, the generated target and its shift, the budget)."""
    return _digest(_hashed(suite))


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, val in data.items():
        if isinstance(val, dict):
            out.update(_flatten(val, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = val
    return out


def suite_differences(suites: Iterable[dict]) -> str:
    """Why records with different `suite_hash` cannot share a table: the resolved suite
    keys whose values differ, e.g. "train.steps (150 vs 4)"."""
    flat = [{k: v for k, v in _flatten(s).items() if k not in ("seeds", "description")} for s in suites]
    keys = sorted(set().union(*flat))
    diffs = [f"{k} ({' vs '.join(str(f.get(k, '-')) for f in flat)})" for k in keys if len({str(f.get(k)) for f in flat}) > 1]
    return ", ".join(diffs) or "no recorded key (the hash changed with the code)"


def run_hash(suite: SuiteConfig, variant, seed: int) -> str:
    """Covers everything that defines one run's result: the suite, and the method's config as
    each field's hash rule says (an option added after records existed counts only where it
    is not at its default, so that those records keep their hashes)."""
    return _digest({"suite": suite_hash(suite), "method": variant.method, "config": _hashed(variant.config), "seed": seed})
