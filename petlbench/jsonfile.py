"""Strict reading of the JSON files petlbench trusts (records, manifests, model configs): a
regular file (a FIFO or a device could block a read forever), of a bounded size, UTF-8,
every key once per object (JSON itself keeps the last silently), finite numbers only, and
no nesting deeper than Python parses. Torch-free."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any


class Unreadable(Exception):
    """Why a file is not a JSON document petlbench reads."""


def read(path: Path, max_bytes: int, what: str) -> Any:
    """The JSON document in ``path`` (a ``what``: "record", "config", ...); raises
    `Unreadable` with the reason."""
    try:
        status = Path(path).stat()
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(status.st_mode):
            raise Unreadable("not a regular file")
        if status.st_size > max_bytes:
            raise Unreadable(f"{status.st_size:,} bytes, larger than a {what} can be")
        return json.loads(
            Path(path).read_bytes().decode("utf-8"),
            parse_constant=_no_constants,
            parse_float=_finite_float,
            object_pairs_hook=_no_key_twice,
        )
    except FileNotFoundError:
        raise Unreadable("no such file") from None
    except IsADirectoryError:
        raise Unreadable("a folder, not a file") from None
    except PermissionError:
        raise Unreadable("not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise Unreadable(f"nested too deeply to be a {what}") from None
    except ValueError as exc:  # json.JSONDecodeError included
        raise Unreadable(f"not valid JSON: {exc}") from None
    except OSError as exc:  # an I/O error, a name too long
        raise Unreadable(f"cannot be read ({exc.strerror or exc})") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} is beyond the float range")
    return number


def _no_key_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} twice in one object")
        seen.add(key)
    return dict(pairs)
