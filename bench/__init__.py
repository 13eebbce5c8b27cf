"""Benchmarks: each prints a table, writes JSON, and compares side by side in one run."""
