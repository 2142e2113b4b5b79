"""Performance figures, not tests: `make bench` and `python -m benchmarks.bench_NAME` from the
repository root. Not installed with the package; each script says what it measures and how."""
