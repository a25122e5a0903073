"""What a method is to the rest of petlbench: one `register` call gives its spec (config
class, learning-rate grid, set-up needs), and one `builder` per backbone family it supports
(with what it keeps of that backbone for backward). Everything else (support, dry runs,
estimates, sweeps, tests) derives from the specs; `petlbench.methods` collects them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from petlbench.config import ConfigError, MethodConfig


class UnsupportedError(ConfigError):
    """A method asked for on a backbone family it has no builder for: alone, a
    configuration error; inside a sweep, a record with status `unsupported`."""


@dataclass(frozen=True)
class Keeps:
    """What a method keeps of the backbone for backward, as a bound the method contract
    tests: the transformer blocks of a tower of depth ``depth`` whose activations it saves.
    (Side methods: none; partial fine-tuning: the last k; methods whose gradient crosses the
    backbone: every block.)"""

    blocks: Callable[[MethodConfig, int], range]  # (config, tower depth) -> the blocks that keep activations
    says: str  # the same, in words


NOTHING = Keeps(lambda cfg, depth: range(0), "no backbone block")
EVERY_BLOCK = Keeps(lambda cfg, depth: range(depth), "every backbone block")


def last_blocks(option: str) -> Keeps:
    """The last ``cfg.<option>`` blocks of each tower."""
    return Keeps(lambda cfg, depth: range(depth - getattr(cfg, option), depth), f"the last `{option}` blocks of each tower")


Builder = Callable[..., Any]  # (backbone, config[, data]) -> the model to train


@dataclass
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    # True for the baselines, which decide themselves whether the projections train;
    # every other method follows the suite's `train.head` rule.
    defines_head: bool = False
    # True for methods whose set-up reads training data (LST's Fisher-ranked pruning): a
    # builder then also receives `data(batch_size)`, an iterator of training batches, and
    # `without_data(config)` gives the config that sets up the same shapes without any
    # (for dry runs and estimates, which have no data).
    needs_data: bool = False
    without_data: Callable[[MethodConfig], MethodConfig] | None = None
    # The batch size the set-up reads (None: it reads none), checked against the training split.
    setup_batch: Callable[[MethodConfig], int | None] = lambda cfg: None
    # The learning rates the validation sweep starts from (scripts/lr_sweep.py).
    lr_grid: tuple[float, ...] = ()
    # Why the families without a builder are not supported (one line).
    why_not: str = "it is written against the CLIP dual encoder's module layout"
    builders: dict[str, Builder] = field(default_factory=dict)
    keeps: dict[str, Keeps] = field(default_factory=dict)

    def builder(self, family: str, keeps: Keeps) -> Callable[[Builder], Builder]:
        """Decorator registering ``build(backbone, config[, data])`` for ``family``."""

        def decorate(build: Builder) -> Builder:
            if family in self.builders:
                raise ValueError(f"method {self.name!r}: a second builder for family {family!r}")
            self.builders[family], self.keeps[family] = build, keeps
            return build

        return decorate

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.builders)

    def unsupported_reason(self, family: str) -> str | None:
        """None when the method has a builder for ``family``; else why not, in one line."""
        if family in self.builders:
            return None
        return f"method {self.name!r} does not apply to a {family!r} backbone (supports: {', '.join(self.builders)}): {self.why_not}"

    def apply(self, backbone, cfg: MethodConfig, data: Callable | None = None):
        """The model to train: this method's builder for the backbone's family applied to it;
        raises `UnsupportedError` where there is none. A builder sets ``requires_grad`` on
        what the method trains and returns a module with the backbone's interface
        (`encode_image`, `encode_text`, `logit_scale`): the backbone itself when the method
        changes its inside, or a module wrapping it."""
        if (reason := self.unsupported_reason(backbone.family)) is not None:
            raise UnsupportedError(reason)
        build = self.builders[backbone.family]
        return build(backbone, cfg, data) if self.needs_data else build(backbone, cfg)

    def data_free(self, cfg: MethodConfig) -> MethodConfig:
        """``cfg`` set up without training data (itself where the set-up reads none)."""
        return self.without_data(cfg) if self.needs_data else cfg


METHODS: dict[str, MethodSpec] = {}


def register(name: str, config_cls: type[MethodConfig], **options: Any) -> MethodSpec:
    """The spec of method ``name`` (`MethodSpec`'s fields as ``options``), registered once;
    its builders are added with `MethodSpec.builder`."""
    if name in METHODS:
        raise ValueError(f"method {name!r} registered twice")
    spec = MethodSpec(name, config_cls, **options)
    if spec.needs_data and spec.without_data is None:
        raise ValueError(f"method {name!r} reads data in its set-up: it must say how to set up without (without_data)")
    METHODS[name] = spec
    return spec
