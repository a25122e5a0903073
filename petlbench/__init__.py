"""petlbench: a benchmark of memory-efficient parameter-efficient transfer learning."""

__version__ = "0.1.0"
