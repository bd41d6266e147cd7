"""Benchmarks (``make bench``): never part of ``make test``; numbers land in bench/results."""
