"""Configuration from environment variables (prefix ``SYNCGRAPH_``; ``DATABASE_URL`` aside)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./syncgraph.db"


class Settings(BaseSettings):
    """Every knob of the server. Built once by the CLI or ``create_app``; never at import."""

    model_config = SettingsConfigDict(env_prefix="SYNCGRAPH_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "SYNCGRAPH_DATABASE_URL"),
    )
    dev: bool | None = None
    """Dev mode: None means "on when DATABASE_URL is unset"."""

    batch_limit: int = Field(default=1000, ge=1)
    batch_limits: dict[str, int] = Field(default_factory=dict)
    """Per-entity overrides, e.g. ``{"pieces": 5000}`` (JSON in the environment)."""
    max_page: int = Field(default=10_000, ge=1)
    tombstone_retention_days: int = Field(default=30, ge=0)
    max_actions_per_push: int = Field(default=50, ge=1)
    max_action_bytes: int = Field(default=64 * 1024, ge=1)
    unsigned_action_types: str = ""
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_query_depth: int = Field(default=12, ge=2)
    max_aliases: int = Field(default=30, ge=1)
    max_tokens: int = Field(default=5000, ge=100)
    idempotency_ttl_hours: int = Field(default=24, ge=1)
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)
    pool_size: int = Field(default=20, ge=1)
    """Database connections a process keeps open; half as many more are opened for bursts
    and closed after. As many as the requests in flight: a connection opened for one
    request (with PostgreSQL's TLS handshake and backend process) costs more than the
    request (a 100-record poll under 16 clients: 480 polls/s with 10, 620 with 20)."""
    credential_cache_seconds: float | None = Field(default=None, ge=0, le=60)
    """How long a proved credential is served from memory (0: off). None: 5 s; every
    process hears revocations (PostgreSQL's NOTIFY; on SQLite another process's writes
    are seen in the files' stat). See README "How fast"."""
    db_pooler: Literal["none", "transaction"] = "none"
    """``transaction``: DATABASE_URL points at a transaction pooler (PgBouncer): no statement
    keeps server-side state between transactions (README "Behind PgBouncer")."""
    listen_url: str | None = None
    """PostgreSQL: a direct (or session-pooled) URL for the LISTEN connection; default:
    DATABASE_URL. LISTEN receives nothing through transaction pooling."""
    db_connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds to open a database connection before the request fails."""
    db_statement_timeout: float = Field(default=60.0, ge=0)
    """Seconds one statement may take before it is cancelled and its request fails (0: no
    limit; SQLite waits for the write lock up to SYNCGRAPH_SQLITE_BUSY_TIMEOUT_MS instead)."""
    recheck_seconds: float = Field(default=30.0, gt=0)
    max_subscriptions_per_connection: int = Field(default=100, ge=1)
    max_connections_per_key: int = Field(default=1000, ge=1)
    allowed_origins: str = ""
    """Comma list of browser origins allowed to open websockets ("*" for any)."""
    fast_path: bool = True
    """The fastpath and bulkinput accelerators (app/accel/), where SYNCGRAPH_ACCEL has them on."""
    log_level: str = "INFO"
    domains: str = "education,festival,manufacturing"
    """The shipped domains to serve (a comma list; empty: none of them)."""
    entity_modules: str = ""
    """A comma list of modules declaring ``ENTITIES`` and ``VIEWS``, loaded beside the
    shipped domains and the ``syncgraph.entities`` entry points (README "Your own entities")."""
    migration_paths: str = ""
    """A comma list of folders holding the migrations of those modules' tables (relative to
    the working folder); ``migrate`` and ``serve`` apply them after syncgraph's own."""

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value

    @field_validator("listen_url")
    @classmethod
    def _postgres_listener(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql+asyncpg://", "postgresql://")):
            raise ValueError("SYNCGRAPH_LISTEN_URL must start with postgresql+asyncpg://")
        return value

    @property
    def is_dev(self) -> bool:
        if self.dev is not None:
            return self.dev
        return self.database_url == DEFAULT_DATABASE_URL

    def batch_limit_for(self, collection: str) -> int:
        return self.batch_limits.get(collection, self.batch_limit)

    def unsigned_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.unsigned_action_types.split(",") if t.strip())

    def origins(self) -> list[str]:
        return _items(self.allowed_origins)

    def domain_names(self) -> list[str]:
        return _items(self.domains)

    def entity_module_names(self) -> list[str]:
        return _items(self.entity_modules)

    def migration_folders(self) -> list[Path]:
        return [Path(p) for p in _items(self.migration_paths)]


def _items(text: str) -> list[str]:
    """The items of a comma list, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]
