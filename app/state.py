"""What the running app holds: built in the lifespan (or by a test), never at import."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import make_engine
from app.domains import load_registry
from app.engine.metrics import Metrics
from app.engine.notify import Broker
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

    async def close(self) -> None:
        await self.engine.dispose()


def make_state(settings: Settings, registry: Registry | None = None) -> AppState:
    registry = registry or load_registry()
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
    return AppState(settings, engine, registry, broker, metrics, service)
