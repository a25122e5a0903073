"""Where suites and method variants are found by name: the shipped ones, then a user's
folders named by PETLBENCH_PATH (`config.catalogue`), as `list` shows them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from petlbench import config
from petlbench.variants import load_variant

SHIPPED = config.PROJECT_ROOT


def _user_folder(root: Path, suites: tuple[str, ...] = (), variants: tuple[str, ...] = ()) -> Path:
    """A folder of suites (copies of the shipped vl-retrieval) and variants (of linear)."""
    for kind, names, source in (("suites", suites, "vl-retrieval"), ("methods", variants, "linear")):
        if names:
            (root / kind).mkdir(parents=True)
        for name in names:
            shutil.copy(SHIPPED / kind / f"{source}.yaml", root / kind / f"{name}.yaml")
    return root


def _path(monkeypatch, *folders: str | Path) -> None:
    monkeypatch.setenv(config.PATH_VARIABLE, os.pathsep.join(map(str, folders)))


def test_a_users_suites_and_variants_are_found_by_name_and_listed(cli, tmp_path, monkeypatch):
    suites_only = _user_folder(tmp_path / "a", suites=("mine",))
    both = _user_folder(tmp_path / "b", suites=("theirs",), variants=("my-linear",))
    _path(monkeypatch, "", suites_only, both)  # an empty entry is no folder
    assert config.find("suites", "mine") == suites_only / "suites" / "mine.yaml"
    assert load_variant("my-linear").source == str(both / "methods" / "my-linear.yaml")
    code, out, _ = cli("list")
    assert code == 0
    headings = [line for line in out.splitlines() if not line.startswith(" ")]
    assert headings[:5] == [
        f"suites (shipped: {SHIPPED / 'suites'}):",
        f"suites (PETLBENCH_PATH: {suites_only / 'suites'}):",
        f"suites (PETLBENCH_PATH: {both / 'suites'}):",
        f"method variants (shipped: {SHIPPED / 'methods'}):",
        f"method variants (PETLBENCH_PATH: {both / 'methods'}):",
    ]
    assert "\n  mine " in out and "\n  theirs " in out and "\n  my-linear " in out
    code, _, err = cli("run", "--suite", "nothing")
    assert code == 2 and "glue-stsb, mine, theirs, vl-retrieval," in err


@pytest.mark.parametrize(
    "entry, why",
    [
        ("missing", "no such folder"),
        ("file.yaml", "not a folder"),
        ("empty", "holds neither a suites/ nor a methods/ folder"),
    ],
)
def test_a_petlbench_path_entry_that_is_no_folder_of_suites_or_variants(cli, tmp_path, monkeypatch, entry, why):
    (tmp_path / "file.yaml").write_text("name: x\n")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)  # a relative entry: the message quotes it whole (a long one is cut at 80 characters)
    _path(monkeypatch, entry)
    for argv in (["list"], ["run", "--suite", "vl-retrieval", "--dry-run"]):
        code, out, err = cli(*argv)
        assert (code, out, err) == (2, "", f"petlbench: error: PETLBENCH_PATH: {entry}: {why}\n")


def test_a_name_taken_twice_is_an_error_naming_both_files(cli, tmp_path, monkeypatch):
    shadow = _user_folder(tmp_path / "a", suites=("vl-retrieval",))
    _path(monkeypatch, shadow)
    code, _, err = cli("list")
    first, second = SHIPPED / "suites" / "vl-retrieval.yaml", shadow / "suites" / "vl-retrieval.yaml"
    assert code == 2 and f"suite name 'vl-retrieval' taken twice, by {first} and {second}: rename one" in err
    # between two of a user's folders, and whatever the command looks up
    _path(monkeypatch, _user_folder(tmp_path / "b", variants=("mine",)), _user_folder(tmp_path / "c", variants=("mine",)))
    code, _, err = cli("run", "--suite", "vl-retrieval", "--variants", "linear", "--dry-run")
    assert (
        code == 2 and f"method name 'mine' taken twice, by {tmp_path / 'b/methods/mine.yaml'} and {tmp_path / 'c/methods/mine.yaml'}" in err
    )


def test_a_folder_named_twice_is_read_once(tmp_path, monkeypatch):
    folder = _user_folder(tmp_path, suites=("mine",))
    _path(monkeypatch, folder, folder / ".." / folder.name)
    assert [f.origin for f in config.catalogue("suites")] == ["shipped", "PETLBENCH_PATH"]


def test_list_without_any_variant(cli, tmp_path, monkeypatch):
    _user_folder(tmp_path, suites=("vl-retrieval",))
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)  # a checkout holding one suite and no variant
    code, out, _ = cli("list")
    assert code == 0 and f"method variants (shipped: {tmp_path / 'methods'}):\nregistered methods:" in out
