"""`python -m service <command>` (and `python -m listener`): the same as the `sfsync` console script."""

from __future__ import annotations

import sys

from service.cli import main

sys.exit(main())
