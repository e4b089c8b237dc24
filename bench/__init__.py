"""Throughput benchmarks of the project against plain Keras baselines (``python -m bench.run``)."""
