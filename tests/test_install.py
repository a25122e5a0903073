"""petlbench installed the way a user installs it: a wheel built from the sdist (as
`python -m build` and pip build one), installed into a fresh virtual environment and run
from a folder outside the checkout, so that nothing can be read from the source tree.
Slow (a build and an install): `pytest -m "not slow"` leaves it out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from petlbench.config import PROJECT_ROOT
from tests.conftest import tiny_args

pytestmark = pytest.mark.slow

SUITES = sorted(p.stem for p in (PROJECT_ROOT / "suites").glob("*.yaml"))
VARIANTS = sorted(p.stem for p in (PROJECT_ROOT / "methods").glob("*.yaml"))


def _environ(**extra: str) -> dict[str, str]:
    """The test's environment without what would import petlbench from the checkout or
    add folders of suites."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PETLBENCH_PATH")}
    return {**env, **extra}


def _check(*argv: str | Path, cwd: Path, **env: str) -> str:
    """The command's output; it must succeed."""
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=_environ(**env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment holding petlbench from the wheel, inside a git
    repository that is not petlbench's (a user's project); its dependencies are the test
    environment's packages."""
    root = tmp_path_factory.mktemp("install")
    build = root / "build"
    hook = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
    _check(sys.executable, "-c", hook, build / "sdist", cwd=PROJECT_ROOT)
    (sdist,) = (build / "sdist").glob("petlbench-*.tar.gz")
    _check(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", build / "wheel", sdist, cwd=root)
    (wheel,) = (build / "wheel").glob("petlbench-*.whl")
    project = root / "project"
    project.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    _check(*git, "init", "-q", cwd=project)
    _check(*git, "commit", "-q", "--allow-empty", "-m", "a user's project", cwd=project)
    env = project / ".venv"
    _check(sys.executable, "-m", "venv", "--without-pip", env, cwd=root)
    _check(sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "-q", "--no-deps", "--no-index", wheel, cwd=root)
    # A folder named in a .pth file joins sys.path after the environment's own packages, and
    # the .pth files inside it (an editable petlbench's among them) are not read.
    site = _check(env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(site, "test-environment.pth").write_text("\n".join(ours) + "\n")
    return env


def test_the_installed_package_is_the_wheel(venv, tmp_path):
    where = _check(venv / "bin" / "python", "-c", "import petlbench; print(petlbench.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv)


def test_list_shows_every_shipped_suite_and_variant(venv, tmp_path):
    out = _check(venv / "bin" / "petlbench", "list", cwd=tmp_path)
    shipped = next(line for line in out.splitlines() if line.startswith("suites (shipped: "))
    assert shipped.startswith(f"suites (shipped: {venv}") and shipped.endswith("/petlbench/_shipped/suites):"), shipped
    for name in SUITES + VARIANTS:
        assert f"  {name} " in out, name


def test_a_dry_run_and_a_run_of_a_shipped_suite(venv, tmp_path):
    petlbench = venv / "bin" / "petlbench"
    _check(petlbench, "run", "--suite", "vl-retrieval", "--dry-run", cwd=tmp_path)
    out = tmp_path / "out"
    _check(petlbench, "run", "--suite", "vl-retrieval", "--variants", "linear", "--seeds", "0", "--output", out, *tiny_args(), cwd=tmp_path)
    record = json.loads((out / "linear--seed0.json").read_text())
    assert record["run"]["status"] == "ok" and record["env"]["petlbench"] == "0.1.0"
    # the installed package is not the git repository around it: no commit is claimed
    assert record["env"]["git_commit"] is None and record["env"]["dirty"] is None


def test_a_users_suite_and_variant_by_name_from_petlbench_path(venv, tmp_path):
    mine = tmp_path / "mine"
    (mine / "suites").mkdir(parents=True)
    (mine / "methods").mkdir()
    suite = (PROJECT_ROOT / "suites" / "vl-retrieval.yaml").read_text().replace("name: vl-retrieval", "name: my-suite")
    (mine / "suites" / "my-suite.yaml").write_text(suite)
    shutil.copy(PROJECT_ROOT / "methods" / "linear.yaml", mine / "methods" / "my-linear.yaml")
    petlbench = venv / "bin" / "petlbench"
    listed = _check(petlbench, "list", cwd=tmp_path, PETLBENCH_PATH=str(mine))
    assert "  my-suite " in listed and "  my-linear " in listed and str(mine / "suites") in listed
    _check(petlbench, "run", "--suite", "my-suite", "--variants", "my-linear,linear", "--dry-run", cwd=tmp_path, PETLBENCH_PATH=str(mine))
