"""Benchmarks (figures and ratios, not tests). See bench/README.md."""
