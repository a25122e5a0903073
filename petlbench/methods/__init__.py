"""One module per method, each registering its spec and one builder per backbone family
(`petlbench.registry`); importing this package imports (and so registers) every module in
it, and it is where the rest of petlbench looks methods up."""

import importlib
import pkgutil

from petlbench.config import ConfigError, short
from petlbench.registry import METHODS, MethodSpec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def registered() -> dict[str, MethodSpec]:
    """Every registered method, by name."""
    return METHODS


def get_method(name: str, where: str = "method") -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"{where}: unknown method {short(name)}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]
