"""The suite's training precision, mapped once to the context every forward runs under."""

from __future__ import annotations

import contextlib

import torch

from petlbench.config import Precision


def autocast(precision: Precision, device_type: str) -> contextlib.AbstractContextManager:
    """The one mapping of the suite's `train.precision` to the context that the training
    step's forward and loss, and the evaluation's forward, run under. bf16: `torch.autocast`
    (weights, gradients and optimizer state stay fp32; bf16 has fp32's exponent range, so no
    loss scaling). fp32: no context at all, so fp32 figures are exactly those of plain code."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype={"bf16": torch.bfloat16}[precision])
