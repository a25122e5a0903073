"""Fault injection at named points of a sweep, for the fault tests: a process is killed where
a test says, not after a sleep (which is flaky on loaded machines).

``PETLBENCH_FAULT="POINT:SIGNAL[:VARIANT],..."`` sends ``SIGNAL`` (e.g. ``SIGKILL``, ``SIGTERM``)
to the current process when it reaches ``POINT`` (while running ``VARIANT``, when given).
Unset, `inject` costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "PETLBENCH_FAULT"
POINTS = (
    "run.warmup",  # a run's warm-up step is done (in the run's own process where runs are isolated)
    "run.spawned",  # the sweep has handed a run to its process (a worker's, or its own on CUDA), in the sweep's process
    "record.write",  # a record's temporary file is written, not yet renamed into place
    "sweep.recorded",  # a run's record is in place
    "figure.png",  # a figure's PNG is in place, its PDF not yet written (`run`'s report phase, `plot`)
)


def inject(point: str, variant: str | None = None) -> None:
    """Deliver the signal `ENV` asks for at ``point`` (a name of `POINTS`), if any."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, rest = item.partition(":")
        signame, _, only = rest.partition(":")
        if name == point and (not only or only == variant):
            os.kill(os.getpid(), signal.Signals[signame])
