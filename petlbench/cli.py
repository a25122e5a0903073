"""`petlbench run | list | report | plot | compare | estimate`: the command line.

Configuration errors print one line naming the file, the key and what is allowed, and
exit with code 2 (no traceback). A sweep whose runs end in `error` exits with code 1
after writing every record; `oom` and `diverged` are results, not failures. `compare`
exits with 1 on a regression and 2 when the two folders are not comparable.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from petlbench import config as cfgmod
from petlbench.config import ConfigError, OutputError
from petlbench.report import WIDTHS
from petlbench.report.tables import BY, FORMATS, summary_table

if TYPE_CHECKING:
    from petlbench.plan import Shard

Command = Callable[[argparse.Namespace], int]


def _fraction(text: str) -> float:
    try:
        if (value := float(text)) >= 0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a non-negative fraction such as 0.02, got {text!r}")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {cfgmod.clip(text)!r}")
    return values


def _names(option: str, text: str | None) -> list[str] | None:
    """The comma-separated names of ``option`` (None when it is not given): at least one,
    none empty."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(f"{option} {cfgmod.clip(text)!r}: expected comma-separated names, none empty")
    return names


def _positive_int(text: str) -> int:
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")


def _shard(text: str) -> Shard:
    from petlbench.plan import Shard

    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    from petlbench.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sizes(text: str) -> list[int]:
    from petlbench.budget import parse_budgets

    try:
        return parse_budgets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stoppable(what: str, left: str) -> Callable[[Command], Command]:
    """A command that SIGINT and SIGTERM end with one line saying what they stopped (``what``)
    and what is ``left``, and exit 130 / 143 (128 + the signal), as `run` does."""

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def stoppable(args: argparse.Namespace) -> int:
            from petlbench.signals import Interrupted, interruptible

            with interruptible():
                try:
                    return command(args)
                except KeyboardInterrupt:
                    signum = signal.SIGINT
                except Interrupted as exc:
                    signum = exc.signum
            print(f"petlbench: interrupted by {signal.Signals(signum).name} during {what}; {left}", file=sys.stderr)
            return 128 + signum

        return stoppable

    return wrap


@_stoppable("the estimate", "nothing was written")
def _cmd_estimate(args: argparse.Namespace) -> int:
    """The estimate; its workers stop with it (`signals.die_with_parent`)."""
    return _estimate(args)


def _estimate(args: argparse.Namespace) -> int:
    from petlbench import estimate
    from petlbench import estimate_output as output
    from petlbench.folder import check_writable

    variants = _names("--variants", args.variants)
    if args.output:
        check_writable(args.output, keep=False)
    job = estimate.make_job(args.model, args.suite, variants, args.seq_len, args.precision, args.grad_checkpointing, args.target_len)
    if args.budget is None:
        rows, batch = estimate.at_batch(job, args.batch_size), f"batch {args.batch_size}"
    else:
        rows, batch = estimate.within_budget(job, args.budget), f"the largest batch within {args.budget / 2**30:.2f} GiB"
    if args.json:
        print(output.as_json(job, rows))
    else:
        print(output.describe(job, batch))
        print()
        print(output.table(rows))
    if args.output:
        paths = output.write_records(job, rows, args.output)
        print(f"{len(paths)} records in {args.output}", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Plan (every check), then run; SIGINT and SIGTERM end it with one line and exit
    130 / 143, a record that cannot be written with exit 1."""
    from petlbench.signals import Interrupted, interruptible

    with interruptible():
        try:
            return _run(args)
        except KeyboardInterrupt:
            exc = Interrupted(signal.SIGINT)
        except Interrupted as caught:
            exc = caught
        except OutputError as caught:
            print(
                f"petlbench: error: {caught}; the sweep stopped, finished records are in place (resume with the same command)",
                file=sys.stderr,
            )
            return 1
    print(f"petlbench: {exc}", file=sys.stderr)
    return 128 + exc.signum


def _run(args: argparse.Namespace) -> int:
    """Every plan first (one per budget; all checks and estimates), then their runs."""
    import torch

    from petlbench.isolation import slots
    from petlbench.plan import default_output, make_plan, resolve_device

    if args.launcher == "slurm":  # the tasks resolve the device and their slots on their nodes, which this one may not resemble
        tasks, params = _check_launcher(args)
        device = torch.device("cuda" if args.device == "cuda" else "cpu")
    elif args.slurm is not None:
        raise ConfigError("--slurm: its parameters are for --launcher slurm")
    else:
        device = resolve_device(args.device)
    if args.memory_limit is not None and device.type != "cuda":
        raise ConfigError(f"--memory-limit caps the CUDA caching allocator; this run is on {device.type} (use --device cuda)")
    if args.launcher == "local":
        places = slots(device, args.jobs, args.threads_per_run, args.devices)
    output = args.output
    if args.budget and output is None:  # the budgets' subfolders share one parent
        output = default_output(cfgmod.load_suite(args.suite, args.set))
    variants = _names("--variants", args.variants)
    plans = [make_plan(args.suite, variants, args.seeds, output, args.set, args.shard, budget, device) for budget in args.budget or [None]]
    if args.launcher == "slurm":
        return _submit(args, plans, tasks, params)
    failed = False
    for plan in plans:
        plan.memory_limit = args.memory_limit
        failed |= _run_one_plan(plan, device, places, args.dry_run)
    if len(plans) > 1 and plans[0].shard is None and not args.dry_run:
        from petlbench.report.files import write_report

        write_report(output, [plan.output for plan in plans])
    return 1 if failed else 0


def _check_launcher(args: argparse.Namespace) -> tuple[int | None, dict]:
    """`--launcher slurm`: the options it needs and those it sets itself, before the plan."""
    from petlbench import launch

    if args.output is None:
        raise ConfigError("--launcher slurm: needs --output DIR, the folder every task of the array writes into")
    if args.shard is not None or args.dry_run:
        raise ConfigError(f"--launcher slurm: {'--shard' if args.shard else '--dry-run'} is not for it (each task runs its own shard)")
    return launch.parse(args.slurm or "")


def _submit(args: argparse.Namespace, plans, tasks: int | None, params: dict) -> int:
    """Submit the checked plans' grid as an array of ``tasks`` shards (default: one per run)
    and the report job; say what was submitted and where the logs go."""
    from petlbench import launch

    tasks = tasks or len(plans[0].grid())
    # what each task runs: this command, less the launcher (every option of `run` that a task needs)
    argv = ["--suite", args.suite, "--device", args.device, "--output", str(args.output), *(f"--set={item}" for item in args.set)]
    for option, value in (
        ("--variants", args.variants),
        ("--seeds", args.seeds and ",".join(map(str, args.seeds))),
        ("--budget", args.budget and ",".join(map(str, args.budget))),
        ("--memory-limit", args.memory_limit),
        ("--jobs", args.jobs),
        ("--threads-per-run", args.threads_per_run),
        ("--devices", args.devices and ",".join(map(str, args.devices))),
    ):
        if value is not None:
            argv += [option, str(value)]
    sweeps = [plan.output for plan in plans] if len(plans) > 1 else None
    ids = launch.submit(main, argv, args.output, tasks, params, sweeps)
    print(f"submitted {tasks} tasks (job ids {', '.join(ids[:-1])}) and the report job {ids[-1]}, which runs when they have all ended")
    print(f"records, report and plots in {args.output}; logs in {launch.logs_folder(args.output)}")
    return 0


def _run_one_plan(plan, device, slots, dry_run: bool) -> bool:
    """Run one plan and write its report; True where a run ended in ``error``."""
    from petlbench.report.files import write_report
    from petlbench.signals import Interrupted
    from petlbench.sweep import run_plan

    runs, grid = len(plan.runs()), len(plan.grid())
    part = f"{runs} runs" if plan.shard is None else f"shard {plan.shard}: {runs} of {grid} runs"
    print(
        f"suite {plan.suite.name} v{plan.suite.version} ({cfgmod.suite_hash(plan.suite)}), {part} on {device}, "
        f"{_at_once(slots)}, records in {plan.output}"
    )
    if dry_run:
        _print_plan(plan, device, slots)
        return False
    if not runs:
        print(f"shard {plan.shard}: nothing to do, the grid has {grid} runs for {plan.shard.count} shards")
        return False
    results = run_plan(plan, device, slots=slots)
    print()
    print(summary_table(results))
    if plan.shard is None:
        try:
            write_report(plan.output)
        except (KeyboardInterrupt, Interrupted) as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            raise Interrupted(
                signum,
                f"interrupted by {signal.Signals(signum).name} while writing the report: every run finished, records in "
                f"{plan.output}; write it with `petlbench report {plan.output}` and `petlbench plot {plan.output}`",
            ) from None
    else:  # the other shards may still be running: the report is made once they all are done
        print(
            f"shard {plan.shard} done, no report written; once all {plan.shard.count} shards are done, "
            f"merge them with `petlbench report {plan.output}` and `petlbench plot {plan.output}`"
        )
    return any(r["run"]["status"] == "error" for r in results)


def _at_once(slots) -> str:
    """How many runs go at once, and where (`isolation.slots`)."""
    if slots[0].gpu is not None:
        return f"one run per GPU at a time on {', '.join(str(slot) for slot in slots)}"
    threads = "" if slots[0].threads is None else f" of {slots[0]}"
    return f"{len(slots)} run{'s' * (len(slots) > 1)} at a time{threads}"


def _print_plan(plan, device, slots) -> None:
    """What `run` would do, run by run (`--dry-run`), in ``slots``."""
    from petlbench import records
    from petlbench.sweep import existing_record, resumed_threads

    threads = resumed_threads(device, slots)

    for variant, seed in plan.runs():
        path = records.record_path(plan.output, variant.name, seed)
        choice = plan.budgets.get(variant.name)
        if variant.name in plan.unsupported:
            what = f"unsupported ({plan.unsupported[variant.name]})"
        elif choice is not None and choice.batch_size is None:
            what = f"over budget ({choice.reason})"
        elif records.is_done(existing_record(path), cfgmod.run_hash(plan.suite, variant, seed), device, threads):
            what = f"done, would be skipped ({path})"
        else:
            what = "would run"
        if choice is not None and choice.batch_size is not None:
            what += (
                f" at batch {choice.batch_size} x {choice.steps} steps, eval batch {choice.eval_batch_size}"
                + (", activation checkpointing" if choice.grad_checkpointing else "")
                + f" (estimated peaks {choice.estimated_train_peak_bytes / 2**20:.2f} / {choice.estimated_eval_peak_bytes / 2**20:.2f} MiB)"
            )
        print(f"  {variant.name} seed {seed}: {what}")
    print("dry run: everything checked, nothing run")


@_stoppable("the report", "nothing was written")
def _cmd_report(args: argparse.Namespace) -> int:
    """The report; the runs a folder's manifest plans that have no record are named, and so
    is a manifest that cannot be read: either makes the exit code 1 under --strict (a shard
    never started is not a smaller result)."""
    from petlbench.folder import runs_without_record
    from petlbench.records import read_folders, sweep_folders

    found = read_folders(args.dirs, args.strict)
    if args.style == "paper":
        from petlbench.report import paper

        if args.format not in ("md", "latex"):
            raise ConfigError(f"report --style paper: --format {args.format} is not one of md, latex")
        print(paper.report(found, args.format, args.width), end="")
    else:
        from petlbench.report.tables import report

        print(report(found, args.format, args.by), end="")
    missing, unreadable = runs_without_record(sweep_folders(args.dirs))
    for folder, runs in missing.items():
        planned = f"{len(runs)} runs of its manifest have" if len(runs) > 1 else "1 run of its manifest has"
        print(f"petlbench: {folder}: {planned} no record: {', '.join(runs)}", file=sys.stderr)
    for problem in unreadable:  # what such a folder planned is unknown: the report may be missing runs
        print(f"petlbench: {problem}", file=sys.stderr)
    return 1 if (missing or unreadable) and args.strict else 0


@_stoppable("the plots", "each figure written is whole, the others were not written")
def _cmd_plot(args: argparse.Namespace) -> int:
    from petlbench.folder import check_writable
    from petlbench.records import read_folders
    from petlbench.report.plots import write_plots

    out = args.out or args.dirs[0]
    check_writable(out, option="--out" if args.out else "DIR")
    plots = write_plots(read_folders(args.dirs, args.strict), out, width=args.width)
    print("\n".join(str(p) for p in plots) or "nothing to plot: no successful run with figures")
    return 0


@_stoppable("the comparison", "nothing was written")
def _cmd_compare(args: argparse.Namespace) -> int:
    from petlbench.records import read_all
    from petlbench.report.compare import compare

    # a folder with two records of one run is refused: `compare` would judge one of them
    baseline, current = (read_all(folder, args.strict, refuse_copies=True) for folder in (args.baseline, args.current))
    result = compare(baseline, current, args.tolerance, args.metric_tolerance)
    print(result.text())
    return result.exit_code


def _cmd_list(args: argparse.Namespace) -> int:
    from petlbench.methods import registered
    from petlbench.tasks import registered as registered_tasks
    from petlbench.variants import load_variant

    suites, variants = cfgmod.catalogue("suites"), cfgmod.catalogue("methods")  # both checked before anything is printed
    for folder in suites:
        print(f"suites ({folder.origin}: {folder.path}):")
        for path in folder.files:
            suite = cfgmod.load_suite(str(path))
            print(f"  {path.stem:<24} v{suite.version}  {suite.task:<10} {suite.description}")
    loaded = [(folder, [load_variant(str(path)) for path in folder.files]) for folder in variants]
    width = max((len(v.method) for _, group in loaded for v in group), default=0)
    for folder, group in loaded:
        print(f"method variants ({folder.origin}: {folder.path}):")
        for variant in group:
            options = ", ".join(f"{k}={v}" for k, v in cfgmod.to_dict(variant.config).items())
            print(f"  {variant.name:<24} {variant.method:<{width}}  {options}")
    print("registered methods: " + ", ".join(sorted(registered())))
    print("tasks:")
    for task in sorted(registered_tasks().values(), key=lambda t: t.name):
        metrics = ", ".join(m.name + ("" if m.higher_is_better else " (lower is better)") for m in task.metrics)
        print(f"  {task.name:<24} {task.display}: {metrics}; primary {task.primary}")
    return 0


STRICT = "exit 2 when a file in the folder is not a valid record (default: name it on stderr and skip it)"


# A method is the algorithm, a variant a configuration of it (a file in methods/): the flag
# that picks variants was called --methods until the task axis; the old name stays an alias
# for one release.
DEPRECATED_VARIANTS_FLAG = ("--methods",)


class _Parser(argparse.ArgumentParser):
    """Usage errors as every other error of petlbench: one line, exit 2 (``--help`` shows
    the usage)."""

    def error(self, message: str):
        command = self.prog.removeprefix("petlbench").strip()  # "run" in the subcommand's parser
        self.exit(2, f"petlbench: error: {command + ': ' if command else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="petlbench", description="Benchmark of memory-efficient parameter-efficient transfer learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate method variants on a suite")
    run.add_argument("--suite", required=True, help="suite name (suites/NAME.yaml) or a YAML path")
    run.add_argument(
        "--variants",
        *DEPRECATED_VARIANTS_FLAG,
        help="comma-separated method variants (methods/NAME.yaml) or YAML paths; 'all' for every variant; default: the variant "
        "named after each registered method (--methods: its old name, kept for one release)",
    )
    run.add_argument("--seeds", type=_int_list, help="comma-separated seeds; default: the suite's seeds")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--output", type=Path, help="record folder; default results/<suite>/<timestamp>/")
    run.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="run only shard I of N (0-based: I = 0..N-1, e.g. $SLURM_ARRAY_TASK_ID with --array=0-(N-1)): "
        "the (variant, seed) runs at grid positions p with p %% N == I; requires --output, the folder all N shards share; "
        "writes records only: run `petlbench report DIR` and `petlbench plot DIR` when all shards are done",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. train.steps=50 or method.lr=1e-3",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="check everything (config, model, data, output folder), print the plan, run nothing"
    )
    run.add_argument(
        "--budget",
        type=_sizes,
        metavar="SIZES",
        help="memory budget(s), e.g. 64MiB or 40MiB,80MiB,160MiB: each variant runs at the largest batch whose estimated "
        "train and eval peaks fit (the suite's budget.* keys: limits, schedule, lr scaling, knobs), "
        "into one subfolder budget-SIZE of the output folder per budget; a variant that does not fit is recorded over_budget",
    )
    run.add_argument(
        "--memory-limit",
        type=_size,
        metavar="SIZE",
        help="CUDA only: cap each run's caching allocator at SIZE (e.g. 24GiB, as on a card that small); a run that needs more ends 'oom'",
    )
    run.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="CPU: N runs at once, in N worker processes that each serve run after run (costliest runs first); default: "
        "$PETLBENCH_JOBS, else as many as the cores allow at --threads-per-run each (--jobs 1 runs in this process)",
    )
    run.add_argument(
        "--threads-per-run",
        type=_positive_int,
        metavar="T",
        help="intra-op threads of each run (recorded as env.threads); default on the CPU: 1, so that metrics, which depend "
        "on the thread count, are the same on every machine; on CUDA: torch's default",
    )
    run.add_argument(
        "--devices",
        type=_int_list,
        metavar="0,1,...",
        help="CUDA: the GPUs to use (indices among the visible ones), one run per GPU at a time, each run's process "
        "seeing only its GPU; default: every visible GPU",
    )
    run.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: run here; slurm: submit the grid as a SLURM job array through submitit (pip install 'petlbench[slurm]'), "
        "each task running its --shard into --output, and a job writing the report and plots once every task has ended",
    )
    run.add_argument(
        "--slurm",
        metavar="KEY=VALUE,...",
        help="with --launcher slurm: array=N tasks (default: one per run), time=MINUTES, and any parameter of submitit's SLURM "
        "executor, e.g. partition=gpu,gpus_per_task=1,array=8,time=120",
    )
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="list suites and method variants")
    lst.set_defaults(func=_cmd_list)

    rep = sub.add_parser("report", help="tables from a folder of result records")
    rep.add_argument(
        "dirs", type=Path, nargs="+", metavar="DIR", help="folders of result records, or a parent of such folders (a `run --budget` folder)"
    )
    rep.add_argument("--format", choices=FORMATS, default="md")
    rep.add_argument(
        "--style",
        choices=("full", "paper"),
        default="full",
        help="full: every recorded figure, a row per variant; paper: the table a retrieval paper prints (display names, "
        "grouped rows, parameters, memory, recalls and rSum; md or latex)",
    )
    rep.add_argument(
        "--width",
        choices=tuple(WIDTHS),
        default="column",
        help="paper LaTeX only: a table for one column (3.3 in: R@1 of each direction and rSum) or a table* for the text width "
        "(6.9 in: every recall)",
    )
    rep.add_argument("--by", choices=tuple(BY), default="variant", help="one row per variant (mean ± std over seeds) or per run")
    rep.add_argument("--strict", action="store_true", help=STRICT)
    rep.set_defaults(func=_cmd_report)

    plot = sub.add_parser("plot", help="figures (PNG and PDF) from a folder of result records")
    plot.add_argument(
        "dirs", type=Path, nargs="+", metavar="DIR", help="folders of result records, or a parent of such folders (a `run --budget` folder)"
    )
    plot.add_argument("--out", type=Path, help="folder for the figures; default: the first DIR")
    plot.add_argument(
        "--width", choices=tuple(WIDTHS), default="column", help="figure width: one column (3.3 in) or the text width (6.9 in) of a paper"
    )
    plot.add_argument("--strict", action="store_true", help=STRICT)
    plot.set_defaults(func=_cmd_plot)

    cmp = sub.add_parser("compare", help="check CURRENT records against BASELINE records for regressions")
    cmp.add_argument("baseline", type=Path, help="folder of baseline records")
    cmp.add_argument("current", type=Path, help="folder of records to check")
    cmp.add_argument(
        "--tolerance", type=_fraction, default=0.02, help="allowed relative growth of a memory or parameter figure (default 0.02)"
    )
    cmp.add_argument(
        "--metric-tolerance",
        type=_fraction,
        help="allowed relative worsening of the primary metric (rSum for retrieval; default: not checked)",
    )
    cmp.add_argument("--strict", action="store_true", help=STRICT)
    cmp.set_defaults(func=_cmd_compare)

    est = sub.add_parser(
        "estimate",
        help="peak training memory of method variants on a real-size model, from fake tensors (no GPU, no weights)",
        description="Estimate torch.cuda.max_memory_allocated of the suite's training step for every method variant, without allocating it.",
    )
    est.add_argument(
        "--model", required=True, help="shipped model or architecture, a folder with config.json or vse.json, or a cached Hugging Face id"
    )
    size = est.add_mutually_exclusive_group(required=True)
    size.add_argument("--batch-size", type=_positive_int, help="estimate the peak at this batch size")
    size.add_argument("--budget", type=_size, help="find each variant's largest batch size whose peak fits, e.g. 24GiB or 512MiB")
    est.add_argument(
        "--seq-len",
        type=_positive_int,
        help="text tokens per caption or source; default: the model's maximum (77 for CLIP, 512 for BERT and T5)",
    )
    est.add_argument(
        "--target-len",
        type=_positive_int,
        help="target tokens of a text-to-text suite, the end token included; default: the suite's (where it leaves it to the tokenizer, 4)",
    )
    est.add_argument(
        "--variants",
        *DEPRECATED_VARIANTS_FLAG,
        help="comma-separated method variants (methods/NAME.yaml) or YAML paths; default: every variant "
        "(--methods: its old name, kept for one release)",
    )
    est.add_argument(
        "--suite",
        help="suite whose task and training rules apply (optimizer, head, temperature, attention); "
        "default: vl-retrieval for a dual encoder, glue for T5",
    )
    est.add_argument(
        "--precision",
        choices=get_args(cfgmod.Precision),
        help="default: the suite's train.precision; bf16 estimates CPU autocast and is unvalidated until checked on a GPU",
    )
    est.add_argument(
        "--grad-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="activation checkpointing of every transformer block, or not (--no-grad-checkpointing); default: the suite's train.grad_checkpointing",
    )
    est.add_argument("--json", action="store_true", help="print a JSON list, one object per variant")
    est.add_argument("--output", type=Path, help="also write result records (memory source 'estimate') to this folder")
    est.set_defaults(func=_cmd_estimate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"petlbench: error: {exc}", file=sys.stderr)
        return 2
    except OutputError as exc:  # a report or a figure that could not be written (`run` says more)
        print(f"petlbench: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
