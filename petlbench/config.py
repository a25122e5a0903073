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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A bad configuration: reported to the user without a traceback (exit code 2).
    ``key``: the dotted key at fault, where one is (lets an override claim the error)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass
class ModelConfig:
    name: str = field(metadata={"help": "shipped model name or local checkpoint folder"})
    attn_implementation: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "attention kernel, pinned for every method"})


# Field metadata ``hashed: False``: a setting that cannot change a run's result (where the
# data lives, how many processes load it), left out of `suite_hash` so that records of the
# same data set from two machines share a table.
NOT_HASHED = {"hashed": False}


@dataclass
class DataConfig:
    kind: Literal["scenes", "karpathy", "jsonl"] = field(
        metadata={"help": "'scenes': the embedded generator; 'karpathy': a Karpathy-split JSON (Flickr30K, COCO); 'jsonl': a manifest"}
    )
    root: str = field(
        default="", metadata={"help": "karpathy / jsonl: the folder holding the annotation file and the images folder", **NOT_HASHED}
    )
    annotations: str = field(default="", metadata={"help": "karpathy / jsonl: the annotation file, relative to data.root"})
    images: str = field(default="", metadata={"help": "karpathy / jsonl: the images folder, relative to data.root"})
    seed: int = field(default=0, metadata={"help": "scenes: generator seed (the data set is identical for every run seed)"})
    train_images: int = field(default=6000, metadata={"help": "scenes: images generated; karpathy / jsonl: the first N (0: all)"})
    val_images: int = field(default=500, metadata={"help": "as train_images, for the validation split"})
    test_images: int = field(default=1000, metadata={"help": "as train_images, for the test split"})
    captions_per_image: int = field(default=5, metadata={"help": "karpathy / jsonl: captions kept per image (the first ones)"})
    text_length: int = field(default=40, metadata={"help": "tokens per caption (padded)"})
    workers: int = field(
        default=4, metadata={"help": "karpathy / jsonl: DataLoader worker processes (0: load in the main process)", **NOT_HASHED}
    )

    def __post_init__(self):
        files = self.kind != "scenes"
        for split in ("train", "val", "test"):
            if getattr(self, f"{split}_images") < (0 if files else 1):
                rule = "0 (all) or more" if files else "at least 1 (0 means 'all' only for data read from files)"
                raise ConfigError(rule, key=f"data.{split}_images")
        for key in ("root", "annotations", "images"):
            if files and not getattr(self, key):
                raise ConfigError(f"required for data.kind {self.kind!r} (a path)", key=f"data.{key}")
            if not files and getattr(self, key):
                raise ConfigError("only for data read from files (data.kind karpathy or jsonl)", key=f"data.{key}")
        if self.captions_per_image < 1:
            raise ConfigError("at least 1", key="data.captions_per_image")
        if not files and self.captions_per_image != 5:
            raise ConfigError("the generated scenes have 5 captions per image", key="data.captions_per_image")
        if self.workers < 0:
            raise ConfigError("0 or more", key="data.workers")


# Training precisions; `objective.autocast` is the one place that maps them to an autocast context.
Precision = Literal["fp32", "bf16"]


@dataclass
class TrainConfig:
    batch_size: int
    steps: int
    warmup_steps: int = 0
    optimizer: Literal["adamw"] = "adamw"
    optimizer_impl: Literal["foreach", "for-loop", "fused"] = field(
        default="foreach", metadata={"help": "AdamW implementation: it changes the memory peak"}
    )
    weight_decay: float = 0.0
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
    measure_steps: int = field(default=2, metadata={"help": "steps after the warm-up step whose memory peak is measured"})

    def __post_init__(self):
        if self.steps < 2:
            raise ConfigError("at least 2 (a warm-up step, then a measured one)", key="train.steps")
        for name in ("batch_size", "measure_steps"):
            if getattr(self, name) < 1:
                raise ConfigError("at least 1", key=f"train.{name}")


@dataclass
class EvalConfig:
    split: Literal["val", "test"] = field(default="test", metadata={"help": "'val' for learning-rate sweeps, 'test' for reported numbers"})
    batch_size: int = 256
    folds: int = field(default=1, metadata={"help": "also report the mean over this many equal folds of the split (COCO: 5 folds of 1K)"})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError("at least 1", key="eval.batch_size")
        if self.folds < 1:
            raise ConfigError("at least 1", key="eval.folds")


@dataclass
class SuiteConfig:
    name: str
    version: int
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: list[int] = field(default_factory=lambda: [0], metadata=NOT_HASHED)
    description: str = field(default="", metadata=NOT_HASHED)


@dataclass
class MethodConfig:
    """Fields every method has; a method's own config subclasses this."""

    lr: float = field(metadata={"help": "peak learning rate (from the suite's validation sweep)"})


@dataclass
class Variant:
    """A method YAML: its file name, its registered method and the validated config."""

    name: str
    method: str
    config: MethodConfig
    source: str


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """``value`` as type ``tp``, or a ConfigError naming the source, the key and what is allowed."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{source}: key '{key}': {value!r} is not {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, prefix=f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, typing.get_args(tp)[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # PyYAML reads "1e-3" (no dot) as a string: accept any numeric spelling.
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    raise TypeError(f"unsupported config type {tp}")


def build(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown and missing keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = ", ".join(fields)
    if not isinstance(data, dict):
        where = f"key '{prefix[:-1]}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping with keys {allowed}, got {data!r}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}'; allowed keys: {allowed}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], source, prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{name}' ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a range check in the schema's __post_init__
        raise ConfigError(f"{source}: key '{exc.key}': {exc}", key=exc.key) from None


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """(name, type, help) of every field: the documentation of a config class."""
    hints = typing.get_type_hints(cls)
    return [(f.name, _type_name(hints[f.name]), f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _find(kind: str, name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = PROJECT_ROOT / kind / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(p.stem for p in available(kind))
        raise ConfigError(f"unknown {kind[:-1]} '{name_or_path}'; known: {known} (or pass a .yaml path)")
    return candidate


def available(kind: str) -> list[Path]:
    """The YAML files of ``kind`` ('suites' or 'methods') shipped with the project."""
    return sorted((PROJECT_ROOT / kind).glob("*.yaml"), key=lambda p: p.stem)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value parsed as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
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
    path = _find("suites", name_or_path)
    data = _read_yaml(path)
    overridden: dict[str, str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "method":
            _check_override(SuiteConfig, keys, value, f"--set {text}")
            _apply(data, keys, value)
            overridden[".".join(keys)] = f"--set {text}"
    try:
        return build(SuiteConfig, data, str(path))
    except ConfigError as exc:  # a range error in a value an override set: name the override
        if exc.key not in overridden:
            raise
        raise ConfigError(overridden[exc.key] + str(exc).removeprefix(str(path)), key=exc.key) from None


def _check_override(cls: type, keys: list[str], value: Any, source: str) -> None:
    """Validate one `--set` against the schema alone, so that its error names it."""
    for i, key in enumerate(keys):
        fields = [f.name for f in dataclasses.fields(cls)]
        dotted = ".".join(keys[: i + 1])
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{dotted}'; allowed keys: {', '.join(fields)}")
        tp = typing.get_type_hints(cls)[key]
        if i == len(keys) - 1:
            _coerce(value, tp, source, dotted)
        elif dataclasses.is_dataclass(tp):
            cls = tp
        else:
            raise ConfigError(f"{source}: '{dotted}' is not a section")


def load_variant(name_or_path: str, overrides: list[str] = ()) -> Variant:
    """The validated method variant, with every `--set method.key=value` applied."""
    from petlbench.registry import get_method

    path = _find("methods", name_or_path)
    data = _read_yaml(path)
    method_name = data.pop("method", None)
    if method_name is None:
        raise ConfigError(f"{path}: missing required key 'method' (a registered method name)")
    spec = get_method(method_name, where=f"{path}: method")
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] == "method":
            if len(keys) != 2:
                raise ConfigError(f"--set {text}: method options are flat (method.KEY=value)")
            _check_override(spec.config_cls, keys[1:], value, f"--set {text}")
            data[keys[1]] = value
    return Variant(name=path.stem, method=method_name, config=build(spec.config_cls, data, str(path)), source=str(path))


# --------------------------------------------------------------------------- hashes


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hashed(obj: Any) -> Any:
    """``obj`` as a dict without its `NOT_HASHED` fields, recursively."""
    if not dataclasses.is_dataclass(obj):
        return obj
    return {f.name: _hashed(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.metadata.get("hashed", True)}


def suite_hash(suite: SuiteConfig) -> str:
    """Covers everything that must be equal for records to share a table: the resolved
    suite without what cannot change a result (`NOT_HASHED`: the default seed list, the
    description, where the data lives and how many workers load it)."""
    return _digest(_hashed(suite))


def run_hash(suite: SuiteConfig, variant: Variant, seed: int) -> str:
    """Covers everything that defines one run's result."""
    return _digest({"suite": suite_hash(suite), "method": variant.method, "config": to_dict(variant.config), "seed": seed})
