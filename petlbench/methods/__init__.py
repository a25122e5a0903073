"""Where the rest of petlbench looks methods up. Importing this package registers every
method's spec (`petlbench.methods.specs`, which imports no torch); the module beside it
that implements a method is imported when a model is first built with it
(`MethodSpec.builders`)."""

from petlbench.config import ConfigError, short
from petlbench.methods import specs  # noqa: F401  (registers every spec)
from petlbench.registry import METHODS, MethodSpec


def registered() -> dict[str, MethodSpec]:
    """Every registered method, by name."""
    return METHODS


def get_method(name: str, where: str = "method") -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"{where}: unknown method {short(name)}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]
