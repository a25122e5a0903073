"""Byte units, defined once: how sizes are parsed from the command line and written in
tables, reports and messages (binary units only: a GB would be 7% off a GiB)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
UNITS = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with a binary unit ('24GiB', '1.5 GiB', '512MiB') or a
    plain byte count. Decimal units ('24GB') are refused rather than guessed: the two
    readings differ by 7%."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?\s*", text)
    nbytes = int(Decimal(match[1]) * UNITS[match[2] or "B"]) if match else 0
    if nbytes < 1:
        raise ValueError(f"{text!r} is not a memory size: write a positive number with a binary unit (B, KiB, MiB, GiB, TiB), e.g. 24GiB")
    return nbytes


def size_label(nbytes: int) -> str:
    """A size as the command line writes it: '64MiB' (the largest unit that divides it)."""
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{nbytes}B"


def memory_unit(values: Iterable[int | None]) -> tuple[str, int]:
    """MiB when every figure is under 1 GiB, else GiB: one unit per column."""
    present = [v for v in values if v is not None]
    return ("MiB", MiB) if all(v < GiB for v in present) else ("GiB", GiB)
