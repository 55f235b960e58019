"""Benchmarks for autobatch: model zoo, probe, tune and throughput benchmarks (not shipped)."""
