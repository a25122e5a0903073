"""What a method is to the rest of petlbench: one `register` call gives its spec (config
class, display name and group, learning-rate grid, set-up needs, the backbone families it
applies to with what it keeps of each for backward), and its module one `builder` per
family. Everything else (support, dry runs, estimates, sweeps, tables, tests) derives from
the specs (`petlbench.methods.specs`, torch-free); `petlbench.methods` collects them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
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

    blocks: Callable[[MethodConfig, int, str], range]  # (config, tower depth, tower) -> the blocks that keep activations
    says: str  # the same, in words


NOTHING = Keeps(lambda cfg, depth, tower: range(0), "no backbone block")
EVERY_BLOCK = Keeps(lambda cfg, depth, tower: range(depth), "every backbone block")


def last_blocks(option: str) -> Keeps:
    """The last ``cfg.<option>`` blocks of each tower."""
    return Keeps(lambda cfg, depth, tower: range(depth - getattr(cfg, option), depth), f"the last `{option}` blocks of each tower")


Builder = Callable[..., Any]  # (backbone, config[, data]) -> the model to train


@dataclass(frozen=True)
class SetupData:
    """What the builder of a method whose set-up reads training data receives
    (`MethodSpec.needs_data`): ``batches(batch_size)``, training batches on the backbone's
    device from a sampler of their own (the run's training batches stay those of every other
    method), and ``loss(model, batch)``, the suite's task's training loss, so that a set-up
    that ranks weights by gradients ranks them for the task being learned."""

    batches: Callable[[int], Iterator[dict[str, Any]]]
    loss: Callable[[Any, dict[str, Any]], Any]


# The kinds of method a paper table groups its rows by (`MethodSpec.group`), in table order.
GROUPS = {
    "baseline": "Baselines",
    "backbone": "Backward through the backbone",
    "memory-efficient": "Memory-efficient",
}


@dataclass
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    display: str  # the method's name in tables and figures, e.g. "Full fine-tuning"
    group: str  # a key of `GROUPS`
    module: str  # the module of `petlbench.methods` that implements it (adds its builders)
    # What the method keeps of each backbone family it applies to, for backward; a family
    # not here is unsupported.
    keeps: dict[str, Keeps]
    # True for the baselines, which decide themselves whether the projections train;
    # every other method follows the suite's `train.head` rule.
    defines_head: bool = False
    # True for methods whose set-up reads training data (LST's Fisher-ranked pruning): a
    # builder then also receives `SetupData`, and
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
    # (config, family) -> why that configuration does not apply to the family, though the
    # method does (one line), or None: a variant's record is then `unsupported` too.
    refuses: Callable[[MethodConfig, str], str | None] = lambda cfg, family: None
    # Filled by the implementing module when it is imported (`builder`, `builders`).
    _builders: dict[str, Builder] = field(default_factory=dict, repr=False)

    def builder(self, family: str) -> Callable[[Builder], Builder]:
        """Decorator registering ``build(backbone, config[, data])`` for ``family``, one of
        the families the spec declares."""

        def decorate(build: Builder) -> Builder:
            if family not in self.keeps:
                raise ValueError(f"method {self.name!r}: a builder for family {family!r}, which its spec does not declare")
            if family in self._builders:
                raise ValueError(f"method {self.name!r}: a second builder for family {family!r}")
            self._builders[family] = build
            return build

        return decorate

    @property
    def builders(self) -> dict[str, Builder]:
        """The builder of every declared family, importing the implementing module (and so
        torch) on first use."""
        if not self._builders:
            importlib.import_module(f"petlbench.methods.{self.module}")
        if self._builders.keys() != self.keeps.keys():
            raise ValueError(
                f"method {self.name!r}: petlbench.methods.{self.module} builds for {sorted(self._builders)}, "
                f"its spec declares {sorted(self.keeps)}"
            )
        return self._builders

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.keeps)

    def unsupported_reason(self, family: str, cfg: MethodConfig | None = None) -> str | None:
        """None when the method (with ``cfg``, where given) applies to ``family``; else why
        not, in one line."""
        if family not in self.keeps:
            return f"method {self.name!r} does not apply to a {family!r} backbone (supports: {', '.join(self.keeps)}): {self.why_not}"
        return None if cfg is None else self.refuses(cfg, family)

    def apply(self, backbone, cfg: MethodConfig, data: SetupData | None = None):
        """The model to train: this method's builder for the backbone's family applied to it;
        raises `UnsupportedError` where there is none. A builder sets ``requires_grad`` on
        what the method trains and returns a module with the backbone's interface
        (`encode_image`, `encode_text`, `logit_scale`): the backbone itself when the method
        changes its inside, or a module wrapping it."""
        if (reason := self.unsupported_reason(backbone.family, cfg)) is not None:
            raise UnsupportedError(reason)
        build = self.builders[backbone.family]
        return build(backbone, cfg, data) if self.needs_data else build(backbone, cfg)

    def data_free(self, cfg: MethodConfig) -> MethodConfig:
        """``cfg`` set up without training data (itself where the set-up reads none)."""
        return self.without_data(cfg) if self.needs_data else cfg


METHODS: dict[str, MethodSpec] = {}


def register(
    name: str, config_cls: type[MethodConfig], display: str, group: str, module: str, keeps: dict[str, Keeps], **options: Any
) -> MethodSpec:
    """The spec of method ``name`` (`MethodSpec`'s fields), registered once; its module
    adds the builders with `MethodSpec.builder`."""
    if name in METHODS:
        raise ValueError(f"method {name!r} registered twice")
    if group not in GROUPS:
        raise ValueError(f"method {name!r}: group {group!r} is not one of {', '.join(GROUPS)}")
    spec = MethodSpec(name, config_cls, display, group, module, keeps, **options)
    if spec.needs_data and spec.without_data is None:
        raise ValueError(f"method {name!r} reads data in its set-up: it must say how to set up without (without_data)")
    METHODS[name] = spec
    return spec
