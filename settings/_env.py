"""Typed configuration from the environment and an env file (prefix ``SFSYNC_``, nested ``__``)."""

from __future__ import annotations

import ipaddress
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SALESFORCE_OBJECTS = ("Lead", "Contact", "Account")


class AuthFlow(StrEnum):
    JWT_BEARER = "jwt_bearer"
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"


class StreamApi(StrEnum):
    COMETD = "cometd"
    PUBSUB = "pubsub"


class SalesforceSettings(BaseModel):
    login_url: str = "https://login.salesforce.com"
    auth_flow: AuthFlow = AuthFlow.JWT_BEARER
    client_id: str | None = None
    client_secret: SecretStr | None = None
    username: str | None = None
    private_key_file: Path | None = None
    refresh_token: SecretStr | None = None
    api_version: str = "62.0"
    client_name: str = "salesforce-sync"
    # Salesforce's Pub/Sub API (gRPC): host:port, TLS unless loopback; http:// forces plaintext.
    pubsub_endpoint: str = "api.pubsub.salesforce.com:7443"

    @field_validator("pubsub_endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        text = value.strip()
        bare = text.removeprefix("http://").removeprefix("https://").rstrip("/")
        host, sep, port = bare.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be host:port (optionally prefixed http:// or https://)")
        return text

    @field_validator("auth_flow", mode="before")
    @classmethod
    def _lower_flow(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not re.fullmatch(r"\d{2,3}\.0", value):
            raise ValueError("must be a Salesforce API version like 62.0")
        return value

    @field_validator("client_name")
    @classmethod
    def _client_name(cls, value: str) -> str:
        # Sent in the Sforce-Call-Options header and matched in CDC changeOrigin.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError("must be non-empty letters, digits, '_', '.' or '-'")
        return value

    @field_validator("login_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    def missing_credentials(self) -> list[str]:
        """The env variables the chosen auth flow needs but that are unset."""
        needed: dict[AuthFlow, tuple[str, ...]] = {
            AuthFlow.JWT_BEARER: ("client_id", "username", "private_key_file"),
            AuthFlow.CLIENT_CREDENTIALS: ("client_id", "client_secret"),
            AuthFlow.REFRESH_TOKEN: ("client_id", "refresh_token"),
        }
        return [
            f"SFSYNC_SALESFORCE__{name.upper()}"
            for name in needed[self.auth_flow]
            if getattr(self, name) in (None, "")
        ]


class MongoSettings(BaseModel):
    uri: SecretStr = SecretStr("mongodb://localhost:27017")
    database: str = "salesforce_sync"
    sync_log_retention_days: int = Field(default=30, ge=1, le=3650)

    @field_validator("uri")
    @classmethod
    def _mongodb_uri(cls, value: SecretStr) -> SecretStr:
        # The scheme and a host; the driver checks the rest when the service connects.
        scheme, sep, rest = value.get_secret_value().partition("://")
        hosts = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
        if scheme not in ("mongodb", "mongodb+srv") or not sep or not hosts.strip(","):
            raise ValueError("must be a mongodb:// or mongodb+srv:// URI with a host")
        return value

    @field_validator("database")
    @classmethod
    def _database_name(cls, value: str) -> str:
        if not value or any(ch in value for ch in '/\\. "$'):
            raise ValueError("must be a non-empty MongoDB database name without / \\ . space \" or $")
        return value


class SyncSettings(BaseModel):
    objects: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(SALESFORCE_OBJECTS))
    frequency_minutes: Literal[1, 5, 10] = 10
    # Seconds between polling passes, overriding frequency_minutes (0: use it); for tests and
    # demos that need several passes in a minute.
    poll_seconds: float = Field(default=0, ge=0, le=3600)
    mappings_file: Path = Path("mappings.toml")
    retry_interval_minutes: int = Field(default=20, ge=1, le=1440)
    retry_max_attempts: int = Field(default=10, ge=1, le=100)
    # Whole-call failures (and expired claims) after which an outbox write becomes a failed sync log.
    outbox_max_attempts: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=200, ge=1, le=2000)
    # 20 ms: at 200 events/s a 100 ms wait put p99 commit->write latency at 283 ms (bench/inbound.py);
    # a backlog fills batches at once, so throughput does not depend on it.
    batch_wait_ms: int = Field(default=20, ge=0, le=10_000)
    # Which API the CDC stream uses: the CometD Streaming API or the Pub/Sub API (gRPC, Avro).
    stream_api: StreamApi = StreamApi.COMETD
    # Leader lease between replicas: renewed every third, a leader stops after half without renewal.
    lease_seconds: float = Field(default=30, ge=1, le=600)
    # Exit 3 once MongoDB or Salesforce stayed unreachable this long without a start; 0: retry forever.
    give_up_seconds: float = Field(default=0, ge=0)
    # Each polling pass re-reads this much before its watermark: a record becomes visible at commit,
    # which can be long after its SystemModstamp (listener/sources/polling.py; at least 2 minutes).
    poll_overlap_seconds: int = Field(default=120, ge=120, le=3600)

    @field_validator("stream_api", mode="before")
    @classmethod
    def _lower_api(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("frequency_minutes", mode="before")
    @classmethod
    def _int_minutes(cls, value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("objects", mode="before")
    @classmethod
    def _split_objects(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("objects")
    @classmethod
    def _known_objects(cls, value: list[str]) -> list[str]:
        unknown = [o for o in value if o not in SALESFORCE_OBJECTS]
        if unknown or not value:
            raise ValueError(
                f"unknown object(s) {unknown or '(empty)'}; allowed: {', '.join(SALESFORCE_OBJECTS)}"
            )
        return list(dict.fromkeys(value))


class BudgetSettings(BaseModel):
    poll_below_pct: float = Field(default=25, ge=0, le=100)
    stream_above_pct: float = Field(default=35, ge=0, le=100)
    reserve_pct: float = Field(default=10, ge=0, le=100)
    # Seconds between the governor's `limits` checks (the only call made while paused).
    check_seconds: float = Field(default=60, gt=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> BudgetSettings:
        if not self.reserve_pct <= self.poll_below_pct <= self.stream_above_pct:
            raise ValueError(
                "need SFSYNC_BUDGET__RESERVE_PCT <= SFSYNC_BUDGET__POLL_BELOW_PCT <= "
                f"SFSYNC_BUDGET__STREAM_ABOVE_PCT (got {self.reserve_pct:g}, {self.poll_below_pct:g}, "
                f"{self.stream_above_pct:g})"
            )
        return self


ADMIN_TOKEN_MIN_LENGTH = 32


class AdminSettings(BaseModel):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    token: SecretStr | None = None
    metrics_public: bool = False  # `/metrics` without the token (a scraper inside a trusted network)
    # Addresses (IPs or CIDRs, comma-separated) whose X-Forwarded-Proto/-For the admin surface trusts.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad one
        return value

    def token_problem(self) -> str | None:
        """Why the configured token cannot be used (None: fine, or unset: the admin API stays closed)."""
        if self.token is not None and len(self.token.get_secret_value()) < ADMIN_TOKEN_MIN_LENGTH:
            return (f"SFSYNC_ADMIN__TOKEN: must be at least {ADMIN_TOKEN_MIN_LENGTH} characters "
                    "(e.g. `openssl rand -hex 32`)")
        return None


class AlertSettings(BaseModel):
    # Slack-compatible incoming webhook (POST {"text": ...}); unset: no alerts. A secret: the
    # URL is the credential, so it is redacted and masked whole.
    webhook_url: SecretStr | None = None
    # New open failures are grouped by error code into at most one message per this many seconds.
    failures_interval_seconds: float = Field(default=300, ge=0)
    # Streaming mode but the sync not running (not ready) for longer than this: one alert.
    stream_down_seconds: float = Field(default=300, ge=0)
    # Messages waiting to be sent; when full the oldest is dropped (and counted).
    queue_size: int = Field(default=100, ge=1, le=10_000)
    # Attempts per message (retried with backoff on network errors, 429 and 5xx).
    max_attempts: int = Field(default=5, ge=1, le=20)

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must be an https:// (or http://) URL")
        return value


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: LogFormat = LogFormat.JSON

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    """The whole service configuration; see the configuration contract in the README."""

    model_config = SettingsConfigDict(
        env_prefix="SFSYNC_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # `SFSYNC_ADMIN__TOKEN=` (as in .env.example) means unset, not an empty secret.
        env_ignore_empty=True,
    )

    salesforce: SalesforceSettings = Field(default_factory=SalesforceSettings)
    mongodb: MongoSettings = Field(default_factory=MongoSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    log: LogSettings = Field(default_factory=LogSettings)
