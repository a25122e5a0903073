"""Data sets for the suites: the embedded synthetic scenes, the files of real data sets and their checks."""
