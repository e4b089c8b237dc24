"""Throughput benchmarks of the project against plain Keras baselines (``python bench/run.py``)."""
