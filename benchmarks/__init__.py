"""Benchmarks: each measures ratios against a baseline run side by side in the same invocation."""
