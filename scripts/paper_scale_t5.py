"""The paper-scale memory table of the methods on T5 (docs/t5-memory.md), from the estimate:

    python scripts/paper_scale_t5.py              # t5-base, t5-large, t5-3b: about 2 minutes on 2 cores

The LST code's GLUE setting, which is the `glue` suite's training rules: batch 100, source
128 tokens, a target of 4 (a label word of up to three pieces and the end token), fp32,
eager attention (transformers 4.6, which the LST code pins, has no other), AdamW. For each
method in its LST-code configuration: the estimated peak of a training step on a GPU
(`torch.cuda.max_memory_allocated`, petlbench's CUDA target), split at the peak's moment into
parameters, gradients, optimizer state, activations (with the step's other temporaries)
and the cuBLAS workspace constant, and its saving relative to full fine-tuning. UniPT is
left out: it has no T5 form of its authors' (petlbench's construction, docs/methods.md).
The table replaces the part of the doc between its two markers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petlbench import estimate
from petlbench.methods import get_method

# The LST code's configuration of each method; its LST takes other ladders at each size
# (nine of 12 blocks, the odd 12 of 24, the last of 24), and SHERL's code has t5-base's alone.
BASELINES = ("full", "adapter-lst", "lora-r32-bias", "bitfit", "prompt-100")
VARIANTS = {
    "t5-base": (*BASELINES, "lst-glue", "sherl-glue"),
    "t5-large": (*BASELINES, "lst-glue-large"),
    "t5-3b": (*BASELINES, "lst-glue-3b"),
}
BATCH, SOURCE, TARGET = 100, 128, 4
START, END = "<!-- scripts/paper_scale_t5.py: start -->", "<!-- scripts/paper_scale_t5.py: end -->"
GiB = 2**30


def model_table(model: str) -> list[str]:
    """The markdown rows of one model."""
    job = estimate.make_job(model, "glue", list(VARIANTS[model]), SOURCE, target_length=TARGET)
    rows = {row.variant.name: row for row in estimate.at_batch(job, BATCH)}
    full = rows["full"].peak.peak_bytes
    lines = [
        f"**{model}**",
        "",
        "| method | variant | trainable | peak (GiB) | saving | parameters | gradients | optimizer state | activations | workspace |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS[model]:
        row = rows[name]
        parts = row.peak.breakdown
        gradients = row.peak.transient_gradients
        activations = parts["transient_peak"] - gradients
        cells = [parts["parameters"], gradients, parts["optimizer_state"], activations, parts["workspace"]]
        saving = 1 - row.peak.peak_bytes / full
        lines.append(
            f"| {get_method(row.variant.method).display} | `{name}` | {row.params['params_trainable']:,} | "
            f"{row.peak.peak_bytes / GiB:.2f} | {'—' if name == 'full' else f'{saving:.0%}'} | "
            + " | ".join(f"{value / GiB:.2f}" for value in cells)
            + " |"
        )
    return [*lines, ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc", type=Path, default=Path("docs/t5-memory.md"), help="the doc whose marked part the tables replace")
    p.add_argument("--models", default=",".join(VARIANTS), help="comma-separated T5 architectures (of t5-base, t5-large, t5-3b)")
    args = p.parse_args()
    lines = [line for model in args.models.split(",") for line in model_table(model)]
    text = args.doc.read_text()
    head, rest = text.split(START)
    _, tail = rest.split(END)
    args.doc.write_text(head + START + "\n" + "\n".join(lines) + END + tail)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
