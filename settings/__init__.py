"""Typed configuration: env / env file -> `Settings`; the mappings file -> validated `Mappings`."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from settings._env import (
    SALESFORCE_OBJECTS,
    AdminSettings,
    AlertSettings,
    AuthFlow,
    BudgetSettings,
    LogFormat,
    LogSettings,
    MongoSettings,
    SalesforceSettings,
    Settings,
    SyncSettings,
)
from settings._errors import ConfigError, first_line
from settings._mappings import (
    CompanyFieldMapping,
    Direction,
    FieldMapping,
    Mappings,
    MergeBehaviour,
    PersonFieldMapping,
    Rules,
    UserLink,
    parse_mappings,
)

__all__ = [
    "SALESFORCE_OBJECTS",
    "AdminSettings",
    "AlertSettings",
    "AuthFlow",
    "BudgetSettings",
    "CompanyFieldMapping",
    "ConfigError",
    "Direction",
    "FieldMapping",
    "LogFormat",
    "LogSettings",
    "Mappings",
    "MergeBehaviour",
    "MongoSettings",
    "PersonFieldMapping",
    "Rules",
    "SalesforceSettings",
    "Settings",
    "SyncSettings",
    "UserLink",
    "load_mappings",
    "load_settings",
    "parse_mappings",
]


def load_settings(env_file: str | Path | None = None, *, require_credentials: bool = True) -> Settings:
    """Read settings from the environment and the env file; raise `ConfigError` with one line."""
    explicit = env_file if env_file is not None else os.environ.get("SFSYNC_ENV_FILE")
    path = Path(explicit) if explicit else Path(".env")
    # A missing default `.env` is normal (plain env vars); a file someone named must exist.
    if explicit and not path.is_file():
        raise ConfigError(f"SFSYNC_ENV_FILE: no such file {str(path)!r}")
    try:
        settings = Settings(_env_file=path)
    except ValidationError as exc:
        raise ConfigError(first_line(exc, mapping=False)) from None
    except SettingsError as exc:
        # e.g. SFSYNC_SALESFORCE='...' that is not JSON: nested values use `__` variables.
        raise ConfigError(
            f"SFSYNC_*: {exc}; set nested values one by one, e.g. SFSYNC_SALESFORCE__LOGIN_URL"
        ) from None
    if require_credentials:
        missing = settings.salesforce.missing_credentials()
        if missing:
            raise ConfigError(
                f"SFSYNC_SALESFORCE__AUTH_FLOW={settings.salesforce.auth_flow.value} "
                f"needs {', '.join(missing)}"
            )
    return settings


def load_mappings(path: Path) -> Mappings:
    """Read and validate the mappings file; raise `ConfigError` naming the key on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"SFSYNC_SYNC__MAPPINGS_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    try:
        return parse_mappings(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_line(exc, mapping=True)}") from None
