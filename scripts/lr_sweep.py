"""Learning-rate sweep on the suite's *validation* split (methods.md, fairness rules).

    python scripts/lr_sweep.py --suite vl-retrieval --seed 0 > docs/lr-sweep.md

Each variant runs over its grid with `eval.split=val`; the best validation rSum picks the
default `lr` written in methods/<variant>.yaml. Records go to results/lr-sweep/<variant>/lr<LR>/.
The test split is never looked at here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from petlbench.sweep import make_plan, run_plan

GRIDS = {
    "full": [3e-5, 1e-4, 3e-4, 1e-3],
    "linear": [3e-3, 1e-2, 3e-2, 1e-1],
    "partial": [1e-4, 3e-4, 1e-3, 3e-3],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="vl-retrieval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(GRIDS))
    p.add_argument("--output", type=Path, default=Path("results/lr-sweep"))
    args = p.parse_args()

    rows = []
    for variant in args.variants.split(","):
        scores = {}
        for lr in GRIDS[variant]:
            overrides = ["eval.split=val", f"method.lr={lr}"]
            plan = make_plan(args.suite, [variant], [args.seed], args.output / variant / f"lr{lr:g}", overrides)
            (record,) = run_plan(plan, torch.device("cpu"))
            scores[lr] = record["metrics"]["rsum"] if record["run"]["status"] == "ok" else float("nan")
        best = max(scores, key=lambda lr: scores[lr] if scores[lr] == scores[lr] else -1)
        rows.append((variant, scores, best))
        print(f"{variant}: " + ", ".join(f"{lr:g} -> {s:.1f}" for lr, s in scores.items()), file=sys.stderr)

    print(f"Validation rSum by learning rate (`python scripts/lr_sweep.py --suite {args.suite} --seed {args.seed}`):\n")
    print("| variant | " + " | ".join("lr / val rSum" for _ in range(4)) + " | chosen lr |")
    print("|---|" + "---|" * 5)
    for variant, scores, best in rows:
        cells = [f"{lr:g}: **{s:.1f}**" if lr == best else f"{lr:g}: {s:.1f}" for lr, s in scores.items()]
        print(f"| {variant} | " + " | ".join(cells) + f" | {best:g} |")


if __name__ == "__main__":
    main()
