"""What the running app holds: built in the lifespan (or by a test), never at import."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import CredentialCache
from app.db import listen, make_engine, others_wrote, serves_several_processes, settle
from app.db.backend import Listener
from app.domains import configured_registry
from app.engine.live.action_tail import ActionTails
from app.engine.live.hub import Hubs
from app.engine.live.notify import Broker, ForeignWrites
from app.engine.metrics import Metrics
from app.engine.registry import Registry
from app.engine.service import Limits, SyncService
from app.settings import Settings


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    registry: Registry
    broker: Broker
    metrics: Metrics
    service: SyncService
    hubs: Hubs
    action_tails: ActionTails
    credentials: CredentialCache = field(default_factory=lambda: CredentialCache(0))
    """Principals proved a moment ago (``credential_cache_seconds``); see ``app.auth``."""
    listener: Listener | None = None
    connections: dict[str, int] = field(default_factory=dict)
    """Open websocket connections per credential (key or device), for the per-key limit."""

    async def start(self) -> None:
        """Background work that needs the event loop: hearing other server processes'
        commits (PostgreSQL's LISTEN; a SQLite database has no other process)."""
        if self.listener is None:
            self.listener = listen(self.engine, self.broker, self._on_reconnect)
            if self.listener is not None:  # every commit of every process is heard now
                self.service.latest.enable()

    def _on_reconnect(self) -> None:
        """Notifications may have been lost: hubs re-check, the credential cache forgets."""
        self.hubs.wake_all()
        self.credentials.revoke()
        self.service.latest.forget()

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        await self.hubs.close()
        await settle(self.engine)
        await self.engine.dispose()


CREDENTIAL_CACHE_SECONDS = 5.0


def credential_cache_seconds(settings: Settings) -> float:
    """The setting, else 5 s: every server process hears revocations (PostgreSQL's NOTIFY),
    and on SQLite a revocation by another process (the CLI) is seen in the files' stat
    (``ForeignWrites``), which empties the cache."""
    if settings.credential_cache_seconds is not None:
        return settings.credential_cache_seconds
    return CREDENTIAL_CACHE_SECONDS


def make_state(settings: Settings, registry: Registry | None = None) -> AppState:
    registry = registry or configured_registry(settings)
    engine = make_engine(settings)
    broker = Broker()
    metrics = Metrics()
    service = SyncService(
        engine,
        registry,
        broker=broker,
        metrics=metrics,
        limits=Limits(
            batch_limit=settings.batch_limit,
            batch_limits=settings.batch_limits,
            max_page=settings.max_page,
            max_actions=settings.max_actions_per_push,
            max_action_bytes=settings.max_action_bytes,
            unsigned_action_types=settings.unsigned_types(),
        ),
    )
    hubs = Hubs(engine, registry, metrics, recheck_seconds=settings.recheck_seconds)
    broker.subscribe(None, hubs.on_commit)
    tails = ActionTails(engine, metrics)
    credentials = CredentialCache(credential_cache_seconds(settings))
    broker.subscribe(None, credentials.on_commit)
    if not serves_several_processes(settings.database_url):
        # SQLite: no process is told of another's commits; the files' stat tells this one
        watch = ForeignWrites(others_wrote(engine))
        credentials.watch = watch
        service.latest.enable(watch)
    return AppState(settings, engine, registry, broker, metrics, service, hubs, tails, credentials)
