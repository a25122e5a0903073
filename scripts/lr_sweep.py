"""Learning-rate sweep on the suite's *validation* split (docs/methods.md, "Fairness rules").

    python scripts/lr_sweep.py --suite vl-retrieval --seed 0        # its section of docs/lr-sweep.md
    python scripts/lr_sweep.py --suite vl-retrieval-near --seed 0
    python scripts/lr_sweep.py --suite vl-retrieval-flickr30k --set data.root=/data/flickr30k --table lr-f30k.md

Each variant runs over its grid with `eval.split=val`; when the best validation score (the
suite's task's primary metric: rSum for retrieval, score for glue) sits
at an end of the grid, the grid is extended past that end (1-3-10 steps) until the best is
inside it, at most `--max-extend` times. The best is the rate to ship: the `lr` of
methods/<variant>.yaml for the suite the variant files were tuned on (vl-retrieval), the
suite's `learning_rates` for any other (printed as YAML at the end). Records go to
results/lr-sweep/<suite>/<variant>/lr<LR>/, so a re-run resumes; the table replaces the
suite's own section of the table file and leaves the others. The test split is never
looked at here.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from petlbench.config import load_suite
from petlbench.methods import get_method
from petlbench.plan import make_plan, resolve_device
from petlbench.sweep import run_plan
from petlbench.tasks import get_task
from petlbench.variants import default_variants, load_variant


def grid(variant: str) -> list[float]:
    """The starting grid the variant's method declares (`MethodSpec.lr_grid`: three points
    around the usual range; frozen-backbone methods want 10-100x full fine-tuning's rate)."""
    return list(get_method(load_variant(variant).method).lr_grid)


def _step(lr: float, up: bool) -> float:
    """The next point of the 1-3-10 series above or below ``lr``."""
    mantissa = lr / 10 ** math.floor(math.log10(lr) + 1e-9)
    factor = (3 if mantissa < 2 else 10 / 3) if up else (1 / 3 if mantissa > 2 else 0.3)
    return float(f"{lr * factor:.3g}")


def val_score(args: argparse.Namespace, variant: str, lr: float) -> float:
    """The validation primary metric of one (variant, lr) run (resumed from its record when done)."""
    overrides = [*args.set, "eval.split=val", f"method.lr={lr}"]
    plan = make_plan(args.suite, [variant], [args.seed], args.output / variant / f"lr{lr:g}", overrides)
    (record,) = run_plan(plan, resolve_device(args.device))
    if record["run"]["status"] != "ok":
        return float("-inf")
    metrics = record["metrics"]
    return metrics["values"][metrics["primary"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="vl-retrieval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", help="comma-separated variants (any shipped one sweeps); default: the suite's, else one per method")
    p.add_argument("--output", type=Path, help="record folder; default results/lr-sweep/<suite>")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a suite override, as for petlbench run (repeatable)")
    p.add_argument("--max-extend", type=int, default=2, help="grid extensions past an end that wins")
    p.add_argument("--table", type=Path, default=Path("docs/lr-sweep.md"), help="where the markdown table goes")
    args = p.parse_args()
    args.output = args.output or Path("results/lr-sweep") / Path(args.suite).stem
    suite = load_suite(args.suite, args.set)
    primary = get_task(suite.task).primary_metric.label
    variants = args.variants.split(",") if args.variants else suite.variants or default_variants()

    rows = []
    for variant in variants:
        scores = {lr: val_score(args, variant, lr) for lr in grid(variant)}
        for _ in range(args.max_extend):
            best = max(scores, key=scores.__getitem__)
            if min(scores) < best < max(scores):
                break
            lr = _step(best, up=best == max(scores))
            scores[lr] = val_score(args, variant, lr)
        scores = dict(sorted(scores.items()))
        best = max(scores, key=scores.__getitem__)
        rows.append((variant, scores, best))
        print(f"{variant}: " + ", ".join(f"{lr:g} -> {s:.1f}" for lr, s in scores.items()), file=sys.stderr, flush=True)

    width = max(len(scores) for _, scores, _ in rows)
    lines = [
        f"Validation {primary} by learning rate (`python scripts/lr_sweep.py --suite {args.suite} --seed {args.seed}`):",
        "",
        "| variant | " + " | ".join(f"lr: val {primary}" for _ in range(width)) + " | chosen lr |",
        "|---|" + "---|" * (width + 1),
    ]
    for variant, scores, best in rows:
        cells = [f"{lr:g}: **{s:.1f}**" if lr == best else f"{lr:g}: {s:.1f}" for lr, s in scores.items()]
        lines.append(f"| {variant} | " + " | ".join(cells + [""] * (width - len(cells))) + f" | {best:g} |")
    write_section(args.table, Path(args.suite).stem, lines)
    print("\n".join(lines))
    print("learning_rates:\n" + "".join(f"  {variant}: {best:g}\n" for variant, _, best in rows))


def write_section(path: Path, suite: str, lines: list[str]) -> None:
    """Replace the ``## suite`` section of the markdown file at ``path`` (up to the next
    ``## `` heading) with ``lines``, or append it; the other sections stay as they are."""
    text = path.read_text() if path.exists() else "# Learning-rate sweeps\n"
    heading = f"## {suite}\n"
    section = heading + "\n" + "\n".join(lines) + "\n"
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
