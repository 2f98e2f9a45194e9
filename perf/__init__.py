"""Measurements: perf_analyzer against Triton, load against the API, and the GPU benchmark."""
