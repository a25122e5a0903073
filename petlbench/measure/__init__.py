"""Measurement, identical for every method: the measured training phase (memory peak and
step times), memory meters (CUDA, NVML, CPU accounting, fake-tensor helpers for the
estimate), attention kernels, parameter counts. Imports nothing from the loop, the
objective or the sweep."""
