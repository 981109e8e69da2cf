"""The admin HTTP surface: health, readiness, metrics, the sync-log API and the Sync Logs page."""

from __future__ import annotations

from service.admin.app import AdminServer, create_admin_app, start_admin
from service.admin.ports import JobRunner, NotLeaderError, StatusProvider, SyncLogReader

__all__ = [
    "AdminServer",
    "JobRunner",
    "NotLeaderError",
    "StatusProvider",
    "SyncLogReader",
    "create_admin_app",
    "start_admin",
]
