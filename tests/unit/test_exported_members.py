"""Each package's public surface is pinned, and the packages import one another in one direction."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPORTS: dict[str, set[str]] = {
    "settings": {
        "SALESFORCE_OBJECTS", "AdminSettings", "AlertSettings", "AuthFlow", "BudgetSettings",
        "CompanyFieldMapping", "ConfigError", "Direction", "FieldMapping", "LogFormat", "LogSettings",
        "Mappings", "MergeBehaviour", "MongoSettings", "PersonFieldMapping", "Rules", "SalesforceSettings",
        "Settings", "SyncSettings", "UserLink", "load_mappings", "load_settings", "parse_mappings",
    },
    "listener": {
        "METRICS", "BudgetGovernor", "CdcStream", "Mode", "Poller",
    },
    "service": {"Service", "main", "run_service"},
    "listener.salesforce": {
        "COLLECTION_LIMIT", "AccessToken", "AiohttpTransport", "ApiUsage", "ClientState", "HttpRequest",
        "HttpResponse", "HttpTransport", "NetworkError", "RetryPolicy", "SalesforceClient",
        "SalesforceFatalError", "fetch_token", "parse_limit_info", "parse_token_response", "token_request",
    },
    "service.admin": {
        "AdminServer", "JobRunner", "NotLeaderError", "StatusProvider", "SyncLogReader", "create_admin_app",
        "start_admin",
    },
    "reconciler": {
        "BudgetExhaustedError", "ChangeKind", "ChangeSink", "ChangeSource", "FatalError", "Jobs",
        "LocalChangeWatcher", "OutboundFlusher", "OutboundWrite", "Outbox", "Reconciler", "RecordError",
        "RecordRejectedError", "RecordResult", "RejectedEvent", "RetriableError", "SalesforceApi",
        "SalesforceChange", "SessionExpiredError", "SkippableError", "SyncError", "SyncLog",
    },
    "reconciler.store": {
        "CREATE", "UPDATE", "BulkOutcome", "Fence", "Lease", "LeaseHolder", "LocalChange", "LocalChangeBatch",
        "OutboxCollection", "OutboxEntry", "OutboxGroup", "RecordVersion", "RecordWrite", "Store",
        "StreamHistoryLostError",
        "WatchedCollection", "decode_cursor", "encode_cursor", "new_object_id", "parse_local_id",
        "translate_errors",
    },
    "emulator": {"EmulatorConfig", "EmulatorState", "create_app"},
}

# Which top-level packages each package may import (besides itself). The demo alone may start the
# emulator's sample org; nothing else in the service depends on the emulator.
MAY_IMPORT: dict[str, set[str]] = {
    "settings": set(),
    "reconciler": {"settings"},
    "listener": {"settings", "reconciler"},
    "service": {"settings", "reconciler", "listener"},
    "emulator": set(),
}
EXCEPTIONS = {("service/demo.py", "emulator")}
PROJECT = {"settings", "reconciler", "listener", "service", "emulator", "tests", "bench"}


class TestExportedMembers:
    @pytest.mark.parametrize("package", sorted(EXPORTS))
    def test_all_is_pinned(self, package: str) -> None:
        """`__all__` is exactly the agreed public surface, and each name in it resolves."""
        module = importlib.import_module(package)
        assert set(module.__all__) == EXPORTS[package]
        for name in module.__all__:
            assert getattr(module, name) is not None, name


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT


class TestImportDirection:
    @pytest.mark.parametrize("package", sorted(MAY_IMPORT))
    def test_package_imports_only_what_it_may(self, package: str) -> None:
        """settings <- reconciler <- listener <- service: no import of a layer above, not even lazily."""
        offending = []
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for imported in _imported_packages(path) - {package} - MAY_IMPORT[package]:
                if (relative, imported) not in EXCEPTIONS:
                    offending.append(f"{relative} imports {imported}")
        assert offending == []



class TestSourceContract:
    def test_both_sources_keep_the_source_protocol(self) -> None:
        """The CometD stream and the poller are `Source`s: the shell needs nothing else of them."""
        from listener.sources import CdcStream, Poller, Source, StreamOptions
        from settings import Mappings

        poller = Poller(object(), object(), object(), Mappings(), ["Lead"])  # type: ignore[arg-type]
        stream = CdcStream(sf=object(), store=object(), sink=object(), catch_up=poller,  # type: ignore[arg-type]
                           objects=["Lead"], options=StreamOptions(client_name="c", api_version="62.0"))
        for source in (poller, stream):
            assert isinstance(source, Source), type(source)
        assert {poller.name, stream.name} == {"poller", "stream"}
