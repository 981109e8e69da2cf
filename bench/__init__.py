"""Benchmarks that print a table of figures: `python -m bench.backfill`, `python -m bench.outbound`."""
