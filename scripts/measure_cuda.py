"""Measure `torch.cuda.max_memory_allocated` (and reserved) of the training step for every
method variant on a random-weight model of a shipped architecture, next to the estimate
(`petlbench estimate`); write both to a fixture that tests/test_estimate.py then uses on
the CPU to guard the estimate.

Each (variant, batch size) runs in a fresh process (docs/measurement.md: allocator state and
cuBLAS handles of one run would otherwise change the next); ``--jobs`` processes share the
GPU at once (each has its own allocator and peak counters). The fixture is rewritten after
every measurement, so a run cut short keeps what it measured. Run on a CUDA machine:

    python scripts/measure_cuda.py                      # ViT-B/32, batches 16 and 64, fp32
    python scripts/measure_cuda.py --methods full,lora --set train.precision=bf16 --output tests/fixtures/cuda_memory_options.json --append
    python scripts/measure_cuda.py --device cpu --model embedded-clip --batch-sizes 4 --output /tmp/x.json   # plumbing check

Every row records the suite overrides it was measured under. With ``--device cpu`` the
"measured" figure is the CPU accounting and the estimate's target is ``cpu`` (exact bytes),
so every ratio must be 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from petlbench.config import available, load_suite
from petlbench.estimate import FakeTraining, at_text_length
from petlbench.measure.memory import meter_for
from petlbench.models.loader import load_architecture
from petlbench.records import write_atomic
from petlbench.tasks.retrieval.task import random_batch
from petlbench.train import Training
from petlbench.variants import data_free, load_variant

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cuda_memory.json"


def measure(model_name: str, suite_name: str, overrides: list[str], variant_name: str, batch_size: int, device: torch.device) -> dict:
    """One (variant, batch size) in this process, through the one measured phase that
    `petlbench.train.run` uses, with the backbone on ``device`` (what the method adds it must
    create there: `prepare` checks)."""
    suite, architecture = load_suite(suite_name, overrides), load_architecture(model_name)
    text_length = architecture.max_text_positions
    torch.manual_seed(0)
    with device:  # random initial weights, computed on the device (as load_backbone puts a checkpoint there)
        backbone = architecture.build(suite.model.attn_implementation)
    variant = data_free(load_variant(variant_name))
    row = {"method": variant_name, "batch_size": batch_size, "overrides": overrides}
    try:
        training = Training.of(backbone, suite.train, variant)
        batches = iter(lambda: random_batch(architecture, batch_size, text_length), None)
        steps_on_host = device.type == "cuda" and suite.train.optimizer_impl != "fused"
        peak = training.measure(batches, device, meter_for(device), steps_on_host).peak
    except torch.OutOfMemoryError:
        return {**row, "status": "oom"}
    target = "cuda" if device.type == "cuda" else "cpu"
    estimate = FakeTraining(architecture, at_text_length(suite, text_length), load_variant(variant_name), target).peak(batch_size)
    return {
        **row,
        "status": "ok",
        "peak_bytes": peak.peak_bytes,
        "reserved_peak_bytes": peak.reserved_peak_bytes,
        "estimate_bytes": estimate.peak_bytes,
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


def _child_command(args: argparse.Namespace, variant: str, batch_size: int) -> list[str]:
    sets = [item for override in args.set for item in ("--set", override)]
    return [
        sys.executable,
        __file__,
        "--model",
        args.model,
        "--suite",
        args.suite,
        "--device",
        args.device,
        *sets,
        "--one",
        variant,
        str(batch_size),
    ]


def _measure_in_child(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"status": "error", "error": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--jobs", type=int, default=1, help="measuring processes at once")
    parser.add_argument("--output", type=Path, default=FIXTURE)
    parser.add_argument("--append", action="store_true", help="keep the rows already in --output (other overrides)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.one:
        print(json.dumps(measure(args.model, args.suite, args.set, args.one[0], int(args.one[1]), device)))
        return

    variants = args.methods.split(",") if args.methods else [p.stem for p in available("methods")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    architecture = load_architecture(args.model)
    kept = json.loads(args.output.read_text())["measurements"] if args.append and args.output.is_file() else []
    kept = [m for m in kept if m.get("overrides", []) != args.set]
    fixture = {
        "model": args.model,
        "suite": args.suite,
        "text_length": architecture.max_text_positions,
        "env": environment(device),
        "measurements": kept,
    }
    jobs = [(name, b) for name in variants for b in batch_sizes]
    print(f"{'method':<18} {'batch':>5} {'estimate (MiB)':>15} {'measured (MiB)':>15} {'estimate / measured':>20}  {args.set or ''}")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        pending = [pool.submit(_measure_in_child, _child_command(args, name, b)) for name, b in jobs]
        for (name, batch_size), future in zip(jobs, pending, strict=True):
            row = {"method": name, "batch_size": batch_size, "overrides": args.set, **future.result()}
            fixture["measurements"].append(row)
            write_atomic(args.output, fixture)
            if row["status"] == "ok":
                ratio = row["estimate_bytes"] / row["peak_bytes"]
                measured = f"{row['estimate_bytes'] / 2**20:15.1f} {row['peak_bytes'] / 2**20:15.1f} {ratio:20.4f}"
            else:
                measured = f"{'-':>15} {row['status'].upper():>15}"
            print(f"{name:<18} {batch_size:>5} {measured}", flush=True)
    print(f"measured figures in {args.output}")


if __name__ == "__main__":
    main()
