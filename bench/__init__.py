"""Benchmark suites (imported as perfkit.bench)."""
