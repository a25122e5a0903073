"""One module per method; importing this package registers them all."""

from petlbench.methods import full, linear, partial  # noqa: F401
