"""Benchmarks: scripts that print figures (never collected by pytest)."""
