"""Memory, parameter and time measurement, identical for every method."""
