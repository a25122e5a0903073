"""Data sets for the suites: the embedded synthetic scenes and retrieval batching."""
