"""Benchmarks (run as scripts: python benchmarks/bench_engine.py)."""
