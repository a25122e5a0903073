"""Method variants: a method YAML (its file name is the variant name) resolved against the
registry, with the `--set method.KEY=value` overrides applied and validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from petlbench.config import ConfigError, MethodConfig, available, build, check_override, clip, find, parse_override, read_yaml, short
from petlbench.methods import get_method, registered


@dataclass
class Variant:
    """A method YAML: its file name, its registered method and the validated config."""

    name: str
    method: str
    config: MethodConfig
    source: str
    overrides: tuple[str, ...] = ()  # the `--set method.KEY=value` applied to it


def load_variant(name_or_path: str, overrides: list[str] = (), suite_lrs: Mapping[str, float] = MappingProxyType({})) -> Variant:
    """The validated method variant, its learning rate the suite's where the suite sets one
    for it (`SuiteConfig.learning_rates`), with every `--set method.key=value` applied."""
    path = find("methods", name_or_path)
    data = read_yaml(path)
    if path.stem in suite_lrs:
        data["lr"] = suite_lrs[path.stem]
    method_name = data.pop("method", None)
    if method_name is None:
        raise ConfigError(f"{path}: missing required key 'method' (a registered method name)")
    if not isinstance(method_name, str):
        raise ConfigError(f"{path}: key 'method': {short(method_name)} is not a registered method name")
    spec = get_method(method_name, where=f"{path}: method")
    applied = []
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] == "method":
            if len(keys) != 2:
                raise ConfigError(f"--set {clip(text)}: method options are flat (method.KEY=value)")
            check_override(spec.config_cls, keys[1:], value, f"--set {clip(text)}")
            data[keys[1]] = value
            applied.append(text)
    config = build(spec.config_cls, data, str(path))
    return Variant(name=path.stem, method=method_name, config=config, source=str(path), overrides=tuple(applied))


def shipped() -> list[str]:
    """Every variant shipped in `methods/`, by name."""
    return [p.stem for p in available("methods")]


def default_variants() -> list[str]:
    """One variant per registered method: the one named after it (`methods/<method>.yaml`)."""
    names = set(shipped())
    return [name for name in sorted(registered()) if name in names]


def data_free(variant: Variant) -> Variant:
    """``variant`` set up without training data (for dry runs and estimates), as its method
    declares (`MethodSpec.without_data`)."""
    return replace(variant, config=get_method(variant.method).data_free(variant.config))
