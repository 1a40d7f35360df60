"""Benchmarks: each prints a table and writes JSON under benchmarks/results/. Run them from
the repository root as modules, e.g. ``python -m benchmarks.hxe_loss --quick``."""
