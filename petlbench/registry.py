"""The method registry: one `register` call per method; everything else derives from it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from petlbench.config import ConfigError, MethodConfig, short


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
    # The backbone kinds (`backbone_kind`) the method applies to; on any other,
    # `apply` raises `UnsupportedError` with `why_not`.
    backbones: tuple[str, ...] = ("clip",)
    why_not: str = ""

    def unsupported_reason(self, backbone: nn.Module) -> str | None:
        """None when the method applies to ``backbone``; else why not, in one line."""
        kind = backbone_kind(backbone)
        if kind in self.backbones:
            return None
        reason = self.why_not or "it is written against the CLIP dual encoder's module layout"
        return f"method {self.name!r} does not apply to a {kind!r} backbone (supports: {', '.join(self.backbones)}): {reason}"


class UnsupportedError(ConfigError):
    """A method asked for on a backbone it does not declare (`MethodSpec.backbones`):
    alone, a configuration error; inside a sweep, a record with status `unsupported`."""


def backbone_kind(backbone: nn.Module) -> str:
    """The backbone family: ``kind`` of the backbone class ('vse'), 'clip' by default."""
    return getattr(backbone, "kind", "clip")


METHODS: dict[str, MethodSpec] = {}


def register(
    name: str,
    config_cls: type[MethodConfig],
    *,
    defines_head: bool = False,
    needs_data: bool = False,
    backbones: tuple[str, ...] = ("clip",),
    why_not: str = "",
):
    """Decorator for a method's ``apply(backbone, config) -> model``.

    ``apply`` sets ``requires_grad`` on what the method trains and returns a module with
    the backbone's interface (`encode_image`, `encode_text`, `logit_scale`): the backbone
    itself when the method changes its inside, or a module wrapping it when the method
    runs it under no_grad and trains a network on its hidden states.

    ``backbones`` lists the backbone kinds it applies to (``why_not`` says why not the
    others); the spec's ``apply`` checks the kind first and raises `UnsupportedError`."""

    def decorate(apply):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")

        @functools.wraps(apply)
        def checked(backbone, cfg, **kwargs):
            reason = METHODS[name].unsupported_reason(backbone)
            if reason is not None:
                raise UnsupportedError(reason)
            return apply(backbone, cfg, **kwargs)

        METHODS[name] = MethodSpec(name, config_cls, checked, defines_head, needs_data, tuple(backbones), why_not)
        return apply

    return decorate


def registered() -> dict[str, MethodSpec]:
    """Every registered method (importing the methods package registers them)."""
    import petlbench.methods  # noqa: F401

    return METHODS


def get_method(name: str, where: str = "method") -> MethodSpec:
    if name not in registered():
        raise ConfigError(f"{where}: unknown method {short(name)}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]
