"""Measurements: perf_analyzer against Triton, and what the families' GPU benchmarks (families/<folder>/benchmark.py)
share: the served runner, the result rows and plots, and their arithmetic."""
