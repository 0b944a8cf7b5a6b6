"""The engine's entry points: each owns one transaction, stamps its changes last, rolls back
dry runs, and notifies after commit. Transports (GraphQL, CLI) call these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import read_transaction, write_transaction
from app.engine.changes import ChangePage, read_changes
from app.engine.metrics import Metrics
from app.engine.notify import Broker
from app.engine.push import PushRequest, PushResult, apply_push, check_push
from app.engine.registry import EntitySpec, Registry
from app.engine.resync import ResyncResult, resync_records
from app.engine.seq import SeqAllocator, current_seq, stamp
from app.engine.sync import Batch, SyncResult, apply_sync, check_batches
from app.errors import BadRequest, Forbidden


@dataclass
class Limits:
    batch_limit: int = 1000
    batch_limits: dict[str, int] | None = None
    max_page: int = 10_000

    def batch_limit_for(self, plural: str) -> int:
        return (self.batch_limits or {}).get(plural, self.batch_limit)


class SyncService:
    def __init__(
        self,
        engine: AsyncEngine,
        registry: Registry,
        *,
        broker: Broker,
        limits: Limits,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.broker = broker
        self.limits = limits
        self.metrics = metrics

    async def sync(
        self,
        tenant_id: str,
        batches: dict[str, Batch],
        *,
        dry_run: bool = False,
        force: bool = False,
        may_clean: bool = True,
    ) -> SyncResult:
        """Bulk upsert in one transaction; ``dry_run`` computes the same report, then rolls
        back and notifies nobody."""
        check_batches(self.registry, batches, limit_for=self.limits.batch_limit_for)
        if not may_clean and any(b.clean_sync for b in batches.values()):
            raise Forbidden("cleanSync needs the scope sync:manage")
        seqs = SeqAllocator(tenant_id)
        async with write_transaction(self.engine) as conn:
            result = await apply_sync(
                conn, self.registry, tenant_id=tenant_id, batches=batches, seqs=seqs, force=force
            )
            if dry_run:
                result.checkpoint = await current_seq(conn, tenant_id)
                await conn.rollback()
                return result
            result.checkpoint = await stamp(conn, seqs)
        self._after_commit(tenant_id, seqs, result.checkpoint)
        for plural, entity in result.entities.items():
            self.metrics.rows_synced(plural, entity.inserted, entity.updated, entity.deleted)
        return result

    async def changes(
        self,
        tenant_id: str,
        *,
        entities: list[EntitySpec],
        since: int | None,
        from_date: datetime | None = None,
        limit: int = 1000,
        columns: dict[str, set[str]] | None = None,
    ) -> ChangePage:
        if limit < 1 or limit > self.limits.max_page:
            raise BadRequest(f"limit must be between 1 and {self.limits.max_page}")
        async with read_transaction(self.engine) as conn:
            page = await read_changes(
                conn,
                tenant_id,
                entities=entities,
                since=since,
                from_date=from_date,
                limit=limit,
                columns=columns,
            )
        self.metrics.pulled(page.size)
        return page

    async def push(self, tenant_id: str, request: PushRequest) -> PushResult:
        """Apply a client's changes in one transaction; ``atomic`` applies all or nothing."""
        check_push(request, self.registry, limit_for=self.limits.batch_limit_for)
        seqs = SeqAllocator(tenant_id)
        async with write_transaction(self.engine) as conn:
            result = await apply_push(conn, self.registry, request, tenant_id=tenant_id, seqs=seqs)
            if request.atomic and result.rejected:
                result.applied = 0
                result.changed_ids = {}
                result.checkpoint = await current_seq(conn, tenant_id)
                await conn.rollback()
                return result
            result.checkpoint = await stamp(conn, seqs)
        self._after_commit(tenant_id, seqs, result.checkpoint)
        return result

    async def resync(
        self, tenant_id: str, entity: EntitySpec, ids: list[str] | None
    ) -> ResyncResult:
        seqs = SeqAllocator(tenant_id)
        async with write_transaction(self.engine) as conn:
            result = await resync_records(conn, entity, tenant_id=tenant_id, ids=ids, seqs=seqs)
            result.checkpoint = await stamp(conn, seqs)
        self._after_commit(tenant_id, seqs, result.checkpoint)
        return result

    def _after_commit(self, tenant_id: str, seqs: SeqAllocator, checkpoint: int) -> None:
        if seqs.count:
            self.broker.publish(tenant_id, checkpoint)

    def entity(self, name: str) -> EntitySpec:
        spec = self.registry.by_any_name(name)
        if spec is None:
            raise BadRequest(f"unknown entity {name!r}")
        return spec

    def describe(self) -> dict[str, Any]:
        return {"entities": [s.plural for s in self.registry.ordered()]}
