"""Measure `torch.cuda.max_memory_allocated` of the training step for every method variant
on a random-weight model of a shipped architecture, at two batch sizes, against the
estimate (`petlbench estimate`); write the measured figures to a fixture that
tests/test_estimate.py then uses on the CPU to guard the estimate.

Each (variant, batch size) runs in a fresh process (measurement.md: allocator state and
cuBLAS handles of one run would otherwise change the next). Run on a CUDA machine:

    python scripts/measure_cuda.py                      # ViT-B/32, batches 16 and 64
    python scripts/measure_cuda.py --set train.precision=bf16 --output tests/fixtures/cuda_memory_bf16.json
    python scripts/measure_cuda.py --device cpu --model embedded-clip --output /tmp/x.json   # plumbing check

With ``--device cpu`` the "measured" figure is the CPU accounting and the estimate's target
is ``cpu`` (exact bytes), so every ratio must be 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from petlbench.config import available, load_suite, load_variant
from petlbench.measure.estimate import FakeTraining, data_free, random_batch
from petlbench.measure.memory import meter_for, training_state
from petlbench.models.loader import load_architecture
from petlbench.train import make_optimizer, prepare, train_step

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cuda_memory.json"


def measure(model_name: str, suite_name: str, overrides: list[str], variant_name: str, batch_size: int, device: torch.device) -> dict:
    """One (variant, batch size) in this process: warm-up step, then the measured step
    under the suite's meter for ``device``, exactly as `petlbench.train.run` measures."""
    suite, architecture = load_suite(suite_name, overrides), load_architecture(model_name)
    text_length = architecture.max_text_positions
    torch.manual_seed(0)
    with device:  # weights, optimizer state and batches are created on the device directly
        variant = data_free(load_variant(variant_name))
        model = prepare(architecture.build(suite.model.attn_implementation), suite, variant)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], suite, variant.config.lr)
        model.train()
        try:
            train_step(model, random_batch(architecture, batch_size, text_length), opt, suite.train.precision)
            with meter_for(device).phase(training_state(model, opt)) as peak:
                train_step(model, random_batch(architecture, batch_size, text_length), opt, suite.train.precision)
        except torch.OutOfMemoryError:
            return {"method": variant_name, "batch_size": batch_size, "status": "oom"}
    return {
        "method": variant_name,
        "batch_size": batch_size,
        "status": "ok",
        "peak_bytes": peak.peak_bytes,
        "reserved_peak_bytes": peak.reserved_peak_bytes,
    }


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device.type}
    if device.type == "cuda":
        env.update(
            device_name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            capability=list(torch.cuda.get_device_capability(device)),
        )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="clip-vit-base-patch32")
    parser.add_argument("--suite", default="vl-retrieval")
    parser.add_argument("--methods", help="comma-separated variants; default: every variant")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="suite override, e.g. train.precision=bf16 (repeatable)"
    )
    parser.add_argument("--output", type=Path, default=FIXTURE)
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.one:
        print(json.dumps(measure(args.model, args.suite, args.set, args.one[0], int(args.one[1]), device)))
        return

    variants = args.methods.split(",") if args.methods else [p.stem for p in available("methods")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    suite, architecture = load_suite(args.suite, args.set), load_architecture(args.model)
    target = "cuda" if device.type == "cuda" else "cpu"
    rows = []
    print(f"{'method':<18} {'batch':>5} {'estimate (MiB)':>15} {'measured (MiB)':>15} {'estimate / measured':>20}")
    for name in variants:
        for batch_size in batch_sizes:
            child = [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--suite",
                args.suite,
                "--device",
                args.device,
                *(item for override in args.set for item in ("--set", override)),
                "--one",
                name,
                str(batch_size),
            ]
            row = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            estimate = FakeTraining(architecture, suite, load_variant(name), architecture.max_text_positions, target).peak(batch_size)
            row["estimate_bytes"] = estimate.peak_bytes
            rows.append(row)
            measured = (
                f"{row['peak_bytes'] / 2**20:15.1f} {estimate.peak_bytes / row['peak_bytes']:20.4f}"
                if row["status"] == "ok"
                else f"{'OOM':>15}"
            )
            print(f"{name:<18} {batch_size:>5} {estimate.peak_bytes / 2**20:15.1f} {measured}", flush=True)

    fixture = {
        "model": args.model,
        "suite": args.suite,
        "overrides": args.set,
        "text_length": architecture.max_text_positions,
        "env": environment(device),
        "measurements": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(fixture, indent=2) + "\n")
    print(f"measured figures in {args.output}")


if __name__ == "__main__":
    main()
