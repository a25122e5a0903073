"""Property-based tests of the boundary (hypothesis, derandomised, bounded example counts):
whatever arrives, the converter, the YAML loader, `--set` parsing and the record reader
answer with a value or with their own error, never with another exception; what they
accept keeps the bounds each field declares."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petlbench import config, records
from petlbench.config import (
    INT64,
    BudgetConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    ShiftConfig,
    SuiteConfig,
    TextDataConfig,
    TrainConfig,
)
from petlbench.methods import registered
from petlbench.report.compare import compare
from petlbench.report.tables import report
from tests.test_report import make_record

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10
)

CLASSES = [
    ModelConfig,
    DataConfig,
    TextDataConfig,
    ShiftConfig,
    TrainConfig,
    EvalConfig,
    BudgetConfig,
    SuiteConfig,
    *dict.fromkeys(spec.config_cls for spec in registered().values()),  # in registry order: every test process collects the same list
]
# Every field that holds a value, not a section (a section's schema may depend on the suite: `data`).
FIELDS = [
    (cls, f)
    for cls in CLASSES
    for f in dataclasses.fields(cls)
    if not dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]) and "schema" not in f.metadata
]
BOUNDED = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _numbers(value):
    """The items a field's bounds apply to: a list's items, a mapping's values, or the value."""
    return value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]


@pytest.mark.parametrize("cls, f", FIELDS, ids=[f"{cls.__name__}.{f.name}" for cls, f in FIELDS])
@SETTINGS
@given(value=values)
def test_a_field_accepts_only_values_within_its_bounds(cls, f, value):
    try:
        accepted = config.check_value(cls, f.name, value, "prop")
    except ConfigError as exc:
        assert len(str(exc)) < 400  # a short prefix of the value, never all of it
        return
    for item in _numbers(accepted):
        if isinstance(item, float):
            assert math.isfinite(item)
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            assert INT64[0] <= item <= INT64[1]
            assert all(holds(item, f.metadata[name]) for name, holds in BOUNDED.items() if name in f.metadata)
        if isinstance(item, str) and f.metadata.get("nonempty"):
            assert item.strip()


def test_every_number_list_and_string_field_declares_its_bounds():
    """So that a new field cannot forget one (`config.rule`)."""
    missing = []
    for cls, f in FIELDS:
        tp = typing.get_type_hints(cls)[f.name]
        item = {list: 0, dict: 1}.get(typing.get_origin(tp))
        item = tp if item is None else typing.get_args(tp)[item]
        if item in (int, float) and not BOUNDED.keys() & f.metadata.keys():
            missing.append(f"{cls.__name__}.{f.name}: no numeric bound")
        if typing.get_origin(tp) is list and "min_items" not in f.metadata:
            missing.append(f"{cls.__name__}.{f.name}: no min_items")
        if item is str and "nonempty" not in f.metadata:
            missing.append(f"{cls.__name__}.{f.name}: says not whether it may be empty")
    assert not missing, missing


SECTIONS = (TrainConfig, DataConfig, EvalConfig, ModelConfig)


@SETTINGS
@given(cls=st.sampled_from(SECTIONS), data=st.data())
def test_build_of_any_mapping_is_a_config_or_a_config_error(cls, data):
    """Mappings over the section's own keys (and now and then another), so that coercion,
    bounds and the checks across fields are reached, not just the unknown-key check."""
    names = [f.name for f in dataclasses.fields(cls)]
    mapping = data.draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=4), values | st.integers(-5, 100), max_size=len(names)))
    try:
        built = config.build(cls, mapping, "prop")
    except ConfigError as exc:
        assert len(str(exc)) < 400
        return
    assert isinstance(built, cls)


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_is_a_mapping_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "x.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(config.read_yaml(path), dict)
    except ConfigError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


@SETTINGS
@given(data=st.dictionaries(st.text(max_size=8), values.filter(lambda v: "nan" not in json.dumps(v).lower()), max_size=6))
def test_what_yaml_writes_reads_back_equal(data):
    assert config.load_yaml(yaml.dump(data, Dumper=_NoAliases)) == data


SUITE_KEYS = [
    f"{section}.{f.name}"
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig))
    for f in dataclasses.fields(cls)
] + ["name", "version", "seeds", "description"]


@SETTINGS
@given(text=st.text(max_size=60) | st.builds("{}={}".format, st.sampled_from(SUITE_KEYS), st.text(max_size=20) | st.integers().map(str)))
def test_any_override_parses_or_is_a_config_error(text):
    """Free text, and `KEY=value` over the suite's own keys, so that real fields are reached."""
    try:
        keys, _ = config.parse_override(text)
    except ConfigError:
        return
    assert keys and all(k.strip() for k in keys)
    try:
        suite = config.load_suite("vl-retrieval", [text])
    except ConfigError:
        return
    assert isinstance(suite, SuiteConfig)


@SETTINGS
@given(content=st.binary(max_size=300))
def test_any_bytes_are_a_record_or_a_reason(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("rec") / "x--seed0.json"
    path.write_bytes(content)
    try:
        records.read(path)
    except records.UnreadableRecord as exc:
        assert str(exc)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))


def _replace(obj, path, value):
    if not path:
        return value
    return {**obj, path[0]: _replace(obj[path[0]], path[1:], value)}


RECORD = make_record("full")
PATHS = [p for p in _paths(RECORD) if p]


@SETTINGS
@given(where=st.sampled_from(PATHS), value=values)
def test_a_damaged_record_is_skipped_or_reported_never_a_crash(tmp_path_factory, where, value):
    """Any one value of a real record replaced by anything: the reader refuses it with a
    reason, or every view built on it (the report) works."""
    path = tmp_path_factory.mktemp("rec") / "full--seed0.json"
    path.write_text(json.dumps(_replace(RECORD, where, value)))
    try:
        record = records.read(path)
    except records.UnreadableRecord:
        return
    for fmt in ("md", "latex", "csv"):
        report([record], fmt)
    compare([record], [record])
    records.is_done(record, record["run"]["run_hash"], torch.device("cpu"), 1)
