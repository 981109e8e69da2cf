"""`python -m listener <command>`: kept for the README, Dockerfile and existing deployments.

A shim, not a dependency: it runs the process shell's entry point (`python -m service`) as
`__main__`, so `listener` itself never imports the shell.
"""

from __future__ import annotations

import runpy

runpy.run_module("service", run_name="__main__", alter_sys=True)
