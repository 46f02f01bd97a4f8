"""The benchmark suite behind ``benchmarks/run.py``: settings, sides, rows, the interleaved runner and the report."""
