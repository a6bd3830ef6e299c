"""Benchmarks (not tests); bench/chaos.py is also imported by tests/integration/test_chaos.py."""
