"""`python -m listener <command>`: the same as the `sfsync` console script."""

from __future__ import annotations

import sys

from listener.cli import main

sys.exit(main())
