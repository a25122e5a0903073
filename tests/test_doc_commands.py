"""Every `petlbench ...` command in a fenced block of README.md or docs/*.md works as
written: each one parses (`build_parser().parse_args`), and each one this machine can run
cheaply runs and exits 0 — `list`; `report`, `plot` and `compare` on the committed folders
under results/; `run` as a dry run (every check, nothing trained); `estimate` of one
variant at batch 1 on the model it names. The commands that need what a test machine
lacks (a data set, a GPU, a folder a real run writes) or minutes of planning are listed
in PARSED_ONLY with the reason; a listed command the documents no longer hold fails, so
the list stays true."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from petlbench.cli import build_parser
from petlbench.config import PROJECT_ROOT

DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
# A command, after any environment assignments (`CUDA_VISIBLE_DEVICES=$k petlbench ...`),
# without a trailing `&` (run in the background).
COMMAND = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(petlbench\s.*?)\s*&?$")
SHELL_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")

NO_DATA = "needs a real data set (data.root=/data/...), which a test machine does not hold"
PARSED_ONLY = {
    "petlbench run --suite vl-retrieval --budget 64MiB": (
        "--budget plans an estimate of every variant at every budget (minutes on 2 cores); "
        "tests/test_budget.py runs budgets at tiny settings"
    ),
    "petlbench run --suite vl-retrieval-flickr30k --set data.root=/data/flickr30k --output results/f30k": NO_DATA,
    "petlbench run --suite vl-retrieval-coco --set data.root=/data/coco --output results/coco": NO_DATA,
    "petlbench run --suite vl-retrieval-flickr30k --set data.root=/data/flickr30k --output results/f30k "
    "--launcher slurm --slurm partition=gpu,gpus_per_task=1,array=8,time=120": "submits to a SLURM cluster, on a real data set",
    "petlbench report results/f30k": "reads the folder the sharded Flickr30K run writes",
    "petlbench plot results/f30k": "reads the folder the sharded Flickr30K run writes",
    "petlbench run --suite vl-retrieval-flickr30k --set data.root=/data/flickr30k --device cuda --budget 24GiB": (
        "needs a GPU and a real data set"
    ),
    "petlbench run --suite vl-retrieval-flickr30k --set data.root=/data/flickr30k --variants full,unipt "
    "--set train.grad_checkpointing=true": NO_DATA,
}
# Folders a documented command reads that only a run writes: such a `compare` is run with
# the committed baseline in their place (a folder compared with itself must pass).
WRITTEN_BY_A_RUN = {"results/ci"}


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every `petlbench ...` line of a fenced block, continuation
    lines joined, `&&` chains split, in the order they appear."""
    found = []
    for doc in DOCUMENTS:
        for block in FENCE.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    if match := COMMAND.match(part.strip()):
                        found.append((doc.relative_to(PROJECT_ROOT).as_posix(), " ".join(match.group(1).split())))
    return found


COMMANDS = documented_commands()


def _argv(command: str) -> tuple[list[str], bool]:
    """The arguments after `petlbench`, shell variables as 0 and a `> FILE` redirection
    dropped; and whether there was a redirection (the command's output is a file)."""
    words = shlex.split(SHELL_VARIABLE.sub("0", command))[1:]
    if ">" in words:
        at = words.index(">")
        return words[:at] + words[at + 2 :], True
    return words, False


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            out.append(word)
    return out


def _with(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option`` set to ``value``."""
    return [*_without(argv, option), option, value]


def _case_id(doc: str, command: str) -> str:
    return f"{doc}:{command.removeprefix('petlbench ')}"


def test_the_documents_hold_commands_of_every_kind():
    kinds = {shlex.split(SHELL_VARIABLE.sub("0", command))[1] for _, command in COMMANDS}
    assert kinds == {"run", "list", "report", "plot", "compare", "estimate"}


def test_every_parsed_only_command_is_still_documented():
    documented = {command for _, command in COMMANDS}
    assert not (stale := sorted(set(PARSED_ONLY) - documented)), f"PARSED_ONLY lists commands no document holds: {stale}"


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[_case_id(*c) for c in COMMANDS])
def test_every_documented_command_parses(doc, command):
    argv, _ = _argv(command)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")
    assert args.command == argv[0]


# Drawing the figures takes matplotlib several seconds a command: outside the fast tier.
EXECUTED = [
    pytest.param(doc, command, id=_case_id(doc, command), marks=[pytest.mark.slow] if command.startswith("petlbench plot") else [])
    for doc, command in COMMANDS
    if command not in PARSED_ONLY
]


@pytest.mark.parametrize(("doc", "command"), EXECUTED)
def test_every_cheap_documented_command_runs(doc, command, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # the documents' paths are relative to the repository
    argv, redirected = _argv(command)
    name = argv[0]
    if name == "run":
        # every check of the real run, nothing trained, nothing written where the document says
        argv = _with(argv, "--output", str(tmp_path / "out")) + ([] if "--dry-run" in argv else ["--dry-run"])
    elif name == "plot":
        argv = _with(argv, "--out", str(tmp_path / "figures"))
    elif name == "compare":
        argv = [argv[0], argv[1], argv[1] if argv[2] in WRITTEN_BY_A_RUN else argv[2], *argv[3:]]
    elif name == "estimate":
        # the model the document names, one variant (LoRA applies to every family), batch 1: the command's path, in seconds
        if "--variants" not in argv and "--methods" not in argv:
            argv += ["--variants", "lora"]
        argv = _with(_without(argv, "--budget"), "--batch-size", "1")
    for word in argv[1:]:
        if word.startswith("results/"):
            assert Path(word).is_dir(), f"{doc}: `{command}` reads {word}, which is not committed"
    code, out, err = cli(*argv)
    assert code == 0, f"{doc}: `{command}` (run as {argv}) exited {code}: {err}"
    if name in ("report", "estimate", "compare", "list") or redirected:
        assert out.strip(), f"{doc}: `{command}` printed nothing"
    if name == "plot":
        assert any(p.suffix == ".png" for p in (tmp_path / "figures").iterdir()), f"{doc}: `{command}` drew nothing"
    if name == "run":
        assert "dry run: everything checked, nothing run" in out
