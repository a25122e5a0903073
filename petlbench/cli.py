"""`petlbench run | list`: the command line.

Configuration errors print one line naming the file, the key and what is allowed, and
exit with code 2 (no traceback). A sweep whose runs end in `error` exits with code 1
after writing every record; `oom` and `diverged` are results, not failures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from petlbench import config as cfgmod
from petlbench.config import ConfigError
from petlbench.report import summary_table


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from petlbench.sweep import make_plan, resolve_device, run_plan

    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    plan = make_plan(args.suite, methods, args.seeds, args.output, args.set)
    device = resolve_device(args.device)
    grid = len(plan.variants) * len(plan.seeds)
    print(
        f"suite {plan.suite.name} v{plan.suite.version} ({cfgmod.suite_hash(plan.suite)}), {grid} runs on {device}, records in {plan.output}"
    )
    results = run_plan(plan, device)
    print()
    print(summary_table(results))
    failed = [r for r in results if r["run"]["status"] == "error"]
    return 1 if failed else 0


def _cmd_list(args: argparse.Namespace) -> int:
    from petlbench.registry import registered

    print("suites:")
    for path in cfgmod.available("suites"):
        suite = cfgmod.load_suite(str(path))
        print(f"  {path.stem:<24} v{suite.version}  {suite.description}")
    print("method variants:")
    for path in cfgmod.available("methods"):
        variant = cfgmod.load_variant(str(path))
        options = ", ".join(f"{k}={v}" for k, v in cfgmod.to_dict(variant.config).items())
        print(f"  {variant.name:<24} {variant.method:<10} {options}")
    print("registered methods: " + ", ".join(sorted(registered())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petlbench", description="Benchmark of memory-efficient parameter-efficient transfer learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate method variants on a suite")
    run.add_argument("--suite", required=True, help="suite name (suites/NAME.yaml) or a YAML path")
    run.add_argument("--methods", help="comma-separated variant names (methods/NAME.yaml); default: every variant")
    run.add_argument("--seeds", type=_int_list, help="comma-separated seeds; default: the suite's seeds")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--output", type=Path, help="record folder; default results/<suite>/<timestamp>/")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. train.steps=50 or method.lr=1e-3",
    )
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="list suites and method variants")
    lst.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"petlbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
