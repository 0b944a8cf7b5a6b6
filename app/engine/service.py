"""The engine's entry points: each owns one transaction, stamps its changes last, rolls back
dry runs, and notifies after commit. Transports (GraphQL, CLI) call these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import analyze_soon, notify_commit, read_transaction, write_transaction
from app.engine.actions import (
    ActionInput,
    ActionPage,
    PushActionsResult,
    check_request,
    push_actions,
    read_actions,
    stamp_actions,
)
from app.engine.changes import ChangePage, read_changes
from app.engine.devices import Registration, is_removed, register_device, remove_device
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
    max_actions: int = 50
    max_action_bytes: int = 64 * 1024
    unsigned_action_types: frozenset[str] = frozenset()

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
                conn,
                self.registry,
                tenant_id=tenant_id,
                batches=batches,
                seqs=seqs,
                force=force,
                defer_last=True,
            )
            if dry_run:
                await seqs.flush(conn)  # fails (or not) exactly as the real write would
                result.checkpoint = await current_seq(conn, tenant_id)
                await conn.rollback()
                return result
            result.checkpoint = await self._stamp(conn, seqs)
        self._after_commit(tenant_id, seqs, result.checkpoint)
        for plural, entity in result.entities.items():
            self.metrics.rows_synced(plural, entity.inserted, entity.updated, entity.deleted)
            analyze_soon(self.engine, entity.spec.table, entity.inserted)
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
            result = await apply_push(
                conn, self.registry, request, tenant_id=tenant_id, seqs=seqs, defer_last=True
            )
            if request.atomic and result.rejected:
                result.applied = 0
                result.changed_ids = {}
                result.checkpoint = await current_seq(conn, tenant_id)
                await conn.rollback()
                return result
            result.checkpoint = await self._stamp(conn, seqs)
        self._after_commit(tenant_id, seqs, result.checkpoint)
        return result

    async def resync(
        self, tenant_id: str, entity: EntitySpec, ids: list[str] | None
    ) -> ResyncResult:
        seqs = SeqAllocator(tenant_id)
        async with write_transaction(self.engine) as conn:
            result = await resync_records(conn, entity, tenant_id=tenant_id, ids=ids, seqs=seqs)
            result.checkpoint = await self._stamp(conn, seqs)
        self._after_commit(tenant_id, seqs, result.checkpoint)
        return result

    # --- devices and the action log -------------------------------------------------------

    async def register_device(self, tenant_id: str, name: str) -> Registration:
        if not name.strip() or len(name) > 255:
            raise BadRequest("a device needs a name of 1 to 255 characters")
        async with write_transaction(self.engine) as conn:
            return await register_device(conn, tenant_id, name)

    async def push_actions(
        self, tenant_id: str, device_id: str, actions: list[ActionInput]
    ) -> PushActionsResult:
        """Store a device's actions (and apply the entity ones) in one transaction."""
        check_request(actions, max_actions=self.limits.max_actions)
        seqs = SeqAllocator(tenant_id)
        async with write_transaction(self.engine) as conn:
            result = await push_actions(
                conn,
                self.registry,
                actions,
                tenant_id=tenant_id,
                device_id=device_id,
                seqs=seqs,
                unsigned_types=self.limits.unsigned_action_types,
                max_bytes=self.limits.max_action_bytes,
            )
            checkpoint = await self._stamp(conn, seqs)
            result.action_seq = await stamp_actions(conn, tenant_id, result.accepted)
            if result.accepted:
                await notify_commit(conn, tenant_id, "actions", result.action_seq)
        self._after_commit(tenant_id, seqs, checkpoint)
        if result.accepted:
            self.broker.publish(tenant_id, result.action_seq, kind="actions")
        return result

    async def actions(
        self, tenant_id: str, *, after: int | None, limit: int, exclude_device: str | None
    ) -> ActionPage:
        if not 1 <= limit <= self.limits.max_page:
            raise BadRequest(f"limit must be between 1 and {self.limits.max_page}")
        async with read_transaction(self.engine) as conn:
            return await read_actions(
                conn, tenant_id, after=after, limit=limit, exclude_device=exclude_device
            )

    async def remove_device(self, tenant_id: str, device_id: str) -> bool:
        async with write_transaction(self.engine) as conn:
            return await remove_device(conn, tenant_id, device_id)

    async def is_device_removed(self, token: str) -> bool:
        async with self.engine.connect() as conn:
            return await is_removed(conn, token)

    async def _stamp(self, conn: AsyncConnection, seqs: SeqAllocator) -> int:
        """Number this transaction's changes and (PostgreSQL) notify other processes."""
        top = await stamp(conn, seqs)
        if seqs.count:
            await notify_commit(conn, seqs.tenant_id, "changes", top)
        return top

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
