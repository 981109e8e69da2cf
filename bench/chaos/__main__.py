"""`python -m bench.chaos --seed S --ops N [--minutes M] [--faults a,b] [--keep]`

Starts the emulator, SecantusDB and two replicas of the real service, plays a seeded schedule of
operations on both sides and faults, waits for the quiet period and checks the outcome against
a reference model. Prints a summary table and, last, `N ops, M faults, K violations`; exits 0
only when K is 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.chaos.plants import CONTROLS, PLANTS
from bench.chaos.runner import run
from bench.chaos.schedule import FAULT_KINDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[1])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=None, help="stop drawing operations after this long")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        help=f"comma list (default all): {','.join(FAULT_KINDS)}; 'none' for no faults")
    parser.add_argument("--keep", action="store_true", help="keep the run directory on success too")
    parser.add_argument("--no-admin", action="store_true",
                        help="no admin operations (mapping edits, retries, re-imports): the schedule "
                             "a seed drew before they existed")
    parser.add_argument("--dir", type=Path, default=None, help="where run directories are made")
    parser.add_argument("--plant", choices=PLANTS + CONTROLS, default=None,
                        help="TEST-ONLY: start the replicas with this bug planted (bench/chaos/plants.py)")
    parser.add_argument("--kill-when-committed", action="store_true",
                        help="a kill_leader waits until the newest event's replay id is committed")
    args = parser.parse_args(argv)
    kinds = () if args.faults.strip() in ("", "none") else tuple(k.strip() for k in args.faults.split(","))
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        parser.error(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}")
    result = run(args.seed, args.ops, minutes=args.minutes, faults=kinds, keep=args.keep, base_dir=args.dir,
                 plant=args.plant, admin=not args.no_admin,
                 kill_when_committed=args.kill_when_committed)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
