"""Reproducible measurements; results go to BENCHMARKS.md (``python -m benchmarks.run``)."""
