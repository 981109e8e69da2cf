"""The process shell: entry point, restart loop, leader term, source switch, readiness and
status, the admin HTTP surface, the CLI, the demo, logging and progress.

Names load on first use (PEP 562), so `sfsync status` does not import the whole service.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.cli import main
    from service.process import run_service
    from service.supervisor import Service

__all__ = ["Service", "main", "run_service"]

_HOME = {
    "Service": "service.supervisor",
    "main": "service.cli",
    "run_service": "service.process",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
