"""The process: entry point and supervisor, the Salesforce sources (CDC stream, poller), the
API-budget governor, metrics and the admin HTTP surface.

Names load on first use (PEP 562), so `sfsync status` does not import the whole service.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from listener.budget import BudgetGovernor, Mode
    from listener.cli import main
    from listener.metrics import METRICS
    from listener.poller import Poller
    from listener.process import run_service
    from listener.stream import CdcStream
    from listener.supervisor import Service

__all__ = ["METRICS", "BudgetGovernor", "CdcStream", "Mode", "Poller", "Service", "main", "run_service"]

_HOME = {
    "METRICS": "listener.metrics",
    "BudgetGovernor": "listener.budget",
    "CdcStream": "listener.stream",
    "Mode": "listener.budget",
    "Poller": "listener.poller",
    "Service": "listener.supervisor",
    "main": "listener.cli",
    "run_service": "listener.process",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'listener' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
