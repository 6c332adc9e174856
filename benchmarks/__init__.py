"""Benchmarks: run one with ``python -m benchmarks.<name>``; each ends with one ``RESULT name=value ...`` line."""
