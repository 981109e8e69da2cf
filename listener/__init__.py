"""Everything that talks to Salesforce and turns it into `SalesforceChange`s.

- `listener.salesforce`: auth, HTTP transport, REST client, API usage;
- `listener.sources`: the inbound sources behind one `Source` protocol (CometD CDC, SOQL polling);
- `listener.events`: CDC event parsing; `listener.budget`: the API-budget governor;
- `listener.metrics`: the in-process Prometheus registry the sources and the shell write.

The process shell (entry point, supervisor, admin HTTP, CLI, demo) is `service/`;
`python -m listener` is a shim that runs it. Names load on first use (PEP 562).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from listener.budget import BudgetGovernor, Mode
    from listener.metrics import METRICS
    from listener.sources.cometd import CdcStream
    from listener.sources.polling import Poller

__all__ = ["METRICS", "BudgetGovernor", "CdcStream", "Mode", "Poller"]

_HOME = {
    "METRICS": "listener.metrics",
    "BudgetGovernor": "listener.budget",
    "CdcStream": "listener.sources.cometd",
    "Mode": "listener.budget",
    "Poller": "listener.sources.polling",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'listener' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
