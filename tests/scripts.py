"""The project's scripts (scripts/*.py), imported as modules for their tests."""

import importlib.util
from types import ModuleType

from petlbench.config import PROJECT_ROOT


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
