"""Seeded fault-injection run with an oracle (issue 14): `python -m bench.chaos`."""
