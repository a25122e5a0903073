"""The method registry: one `register` call per method; everything else derives from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from petlbench.config import ConfigError, MethodConfig


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, MethodConfig], nn.Module]
    # True for the baselines, which decide themselves whether the projections train;
    # every other method follows the suite's `train.head` rule.
    defines_head: bool
    # True for methods whose set-up reads training data (LST's Fisher-ranked pruning):
    # `apply` then also receives `data(batch_size)`, an iterator of training batches.
    needs_data: bool


METHODS: dict[str, MethodSpec] = {}


def register(name: str, config_cls: type[MethodConfig], *, defines_head: bool = False, needs_data: bool = False):
    """Decorator for a method's ``apply(backbone, config) -> model``.

    ``apply`` sets ``requires_grad`` on what the method trains and returns a module with
    the backbone's interface (`encode_image`, `encode_text`, `logit_scale`): the backbone
    itself when the method changes its inside, or a module wrapping it when the method
    runs it under no_grad and trains a network on its hidden states."""

    def decorate(apply):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = MethodSpec(name, config_cls, apply, defines_head, needs_data)
        return apply

    return decorate


def registered() -> dict[str, MethodSpec]:
    """Every registered method (importing the methods package registers them)."""
    import petlbench.methods  # noqa: F401

    return METHODS


def get_method(name: str, where: str = "method") -> MethodSpec:
    if name not in registered():
        raise ConfigError(f"{where}: unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]
