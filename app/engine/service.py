"""The engine's entry points: each owns one transaction, stamps its changes last, rolls back
dry runs, and notifies after commit. Transports (GraphQL, CLI) call these."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import (
    analyze_soon,
    read_transaction,
    single_read,
    snapshot_transaction,
    write_transaction,
)
from app.engine.devices.actions import (
    ActionInput,
    ActionPage,
    PushActionsResult,
    check_request,
    push_actions,
    read_actions,
)
from app.engine.devices.devices import (
    Registration,
    is_removed,
    register_device,
    remove_device,
    set_device_view,
)
from app.engine.live.notify import CREDENTIALS, Broker
from app.engine.metrics import Metrics
from app.engine.read.changes import (
    ChangePage,
    Counter,
    idle_page,
    quiet_page,
    read_changes,
    read_counter,
    tenant_digest,
)
from app.engine.read.latest import LatestSeqs
from app.engine.read.records import (
    Record,
    RecordPage,
    count_records,
    decode_cursor,
    read_record,
    read_records,
    read_related,
)
from app.engine.registry import EntitySpec, Registry
from app.engine.tenants import revoke_key
from app.engine.views.pull import Since, ViewCheckpoint, pull_view, view_changed
from app.engine.views.pull import quiet as quiet_view
from app.engine.views.pull import quiet_page as quiet_view_page
from app.engine.views.spec import Binding, binding_fingerprint, binding_identity
from app.engine.views.visible import visible_ids
from app.engine.write.guard import ViewGuard
from app.engine.write.push import PushRequest, PushResult, apply_push, check_push
from app.engine.write.resync import ResyncResult, resync_records
from app.engine.write.sync import Batch, SyncResult, apply_sync, check_batches
from app.engine.write.tx import WriteTx, open_write
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
        self.latest = LatestSeqs()
        """Tenants' latest seqs as heard (enabled where every commit is heard)."""
        broker.subscribe(None, self.latest.on_commit)

    async def sync(
        self,
        tenant_id: str,
        batches: dict[str, Batch],
        *,
        dry_run: bool = False,
        force: bool = False,
        may_clean: bool = True,
        binding: Binding | None = None,
    ) -> SyncResult:
        """Bulk upsert in one transaction; ``dry_run`` computes the same report, then rolls
        back and notifies nobody. ``binding``: the writer's view (see ``write``)."""
        check_batches(self.registry, batches, limit_for=self.limits.batch_limit_for)
        if not may_clean and any(b.clean_sync for b in batches.values()):
            raise Forbidden("cleanSync needs the scope sync:manage")
        async with self.write(tenant_id, binding=binding) as tx:
            result = await apply_sync(tx, self.registry, batches, force=force, defer_last=True)
            if dry_run:
                tx.rehearse()
        result.checkpoint = tx.checkpoint
        if tx.committed:
            for plural, entity in result.entities.items():
                self.metrics.rows_synced(plural, entity.inserted, entity.updated, entity.deleted)
                analyze_soon(self.engine, entity.spec.table, entity.inserted)
        return result

    async def changes(
        self,
        tenant_id: str,
        *,
        entities: list[EntitySpec],
        since: Since,
        from_date: datetime | None = None,
        limit: int = 1000,
        columns: dict[str, set[str]] | None = None,
        binding: Binding | None = None,
        digest: bool = False,
    ) -> ChangePage:
        """One page of changes for a credential: the whole tenant's feed, or (``binding``)
        the difference through its view (``app.engine.views.pull``)."""
        if limit < 1 or limit > self.limits.max_page:
            raise BadRequest(f"limit must be between 1 and {self.limits.max_page}")
        if binding is not None:
            return await self._view_changes(
                tenant_id, binding, entities, since, from_date, limit, columns, digest
            )
        if isinstance(since, ViewCheckpoint):  # issued through a view this key has left
            return view_changed(since, entities)
        counter = None
        if since is not None and from_date is None and not digest:
            answer, counter = await self._poll(tenant_id, entities, since, limit, columns)
            if answer is not None:
                self.metrics.pulled(answer.size)
                return answer
        reading = snapshot_transaction if digest else read_transaction
        async with reading(self.engine) as conn:
            page = await read_changes(
                conn,
                tenant_id,
                entities=entities,
                since=since,
                from_date=from_date,
                limit=limit,
                columns=columns,
                counter=counter,  # a poll with news reads the counter once
            )
            if digest and not page.has_more and not page.full_sync_required:
                page.digest = await tenant_digest(conn, tenant_id, entities, page.checkpoint)
        self.metrics.pulled(page.size)
        return page

    async def _poll(
        self,
        tenant_id: str,
        entities: list[EntitySpec],
        since: int,
        limit: int,
        columns: dict[str, set[str]] | None,
    ) -> tuple[ChangePage | None, Counter | None]:
        """A poll from a checkpoint, answered without a transaction where it can be: by the
        latest seq this process heard (no statement), by the tenant's counter (nothing new:
        one statement), or, for news of one entity, by one more statement bounded by that
        counter (commit order is seq order). Else None, with the counter read."""
        if self.latest.is_latest(tenant_id, since):
            return idle_page(entities, since), None
        async with single_read(self.engine) as conn:
            answer, counter = await quiet_page(conn, tenant_id, entities=entities, since=since)
            self.latest.confirm(tenant_id, counter[0])
            if answer is None and len(entities) == 1:
                answer = await read_changes(
                    conn,
                    tenant_id,
                    entities=entities,
                    since=since,
                    limit=limit,
                    columns=columns,
                    counter=counter,
                )
        return answer, counter

    async def _view_changes(
        self,
        tenant_id: str,
        binding: Binding,
        entities: list[EntitySpec],
        since: Since,
        from_date: datetime | None,
        limit: int,
        columns: dict[str, set[str]] | None,
        digest: bool,
    ) -> ChangePage:
        if from_date is not None:
            raise BadRequest("a view-bound credential pulls by checkpoint: use since, not fromDate")
        view = self.registry.views[binding.name]
        if isinstance(since, int):  # issued to the whole tenant, before the key was bound
            return view_changed(since, entities)
        if since is not None and not digest:
            fingerprint = binding_fingerprint(view, binding)
            if since.fingerprint == fingerprint and self.latest.is_latest(tenant_id, since.seq):
                counter = (since.seq, 0)
            else:
                async with single_read(self.engine) as conn:
                    counter = await read_counter(conn, tenant_id)
                self.latest.confirm(tenant_id, counter[0])
            if quiet_view(since, counter, fingerprint):
                self.metrics.pulled(0, view=binding.name)
                return quiet_view_page(since, entities)
        page = await pull_view(
            self.engine,
            self.registry,
            tenant_id,
            view,
            binding,
            entities=entities,
            since=since,
            limit=limit,
            columns=columns,
            digest=digest,
        )
        self.metrics.pulled(page.size, view=binding.name)
        self.metrics.moved(binding.name, *page.moves)
        return page

    # --- browsing: list/get and related records -------------------------------------------
    # Plain connections, no transaction: each is one statement (a page, a count, a get, a
    # related-objects batch), and the count of a page is read only when it is asked for.
    # Through a view the caller first asks ``visible_ids`` (one snapshot) and passes them as
    # ``only``; unbound credentials pass None and read exactly as before.

    async def visible_ids(
        self, tenant_id: str, binding: Binding, spec: EntitySpec
    ) -> frozenset[str]:
        """The ids of ``spec``'s records the binding's view shows now, evaluated in one
        snapshot (its rules' statements see one state of the tenant)."""
        async with snapshot_transaction(self.engine) as conn:
            return await visible_ids(conn, self.registry, tenant_id, binding, spec)

    async def records(
        self,
        tenant_id: str,
        spec: EntitySpec,
        *,
        first: int,
        after: str | None,
        alias: str | None,
        include_deleted: bool,
        only: frozenset[str] | None = None,
    ) -> RecordPage:
        if first < 0 or first > self.limits.max_page:
            raise BadRequest(f"first must be between 0 and {self.limits.max_page}")
        after_id = decode_cursor(after) if after else None
        async with self.engine.connect() as conn:
            return await read_records(
                conn,
                spec,
                tenant_id=tenant_id,
                first=first,
                after_id=after_id,
                alias=alias,
                include_deleted=include_deleted,
                only=only,
            )

    async def count_records(
        self,
        tenant_id: str,
        spec: EntitySpec,
        *,
        alias: str | None,
        include_deleted: bool,
        only: frozenset[str] | None = None,
    ) -> int:
        async with self.engine.connect() as conn:
            return await count_records(
                conn,
                spec,
                tenant_id=tenant_id,
                alias=alias,
                include_deleted=include_deleted,
                only=only,
            )

    async def record(
        self,
        tenant_id: str,
        spec: EntitySpec,
        *,
        id: str | None,
        alias: str | None,
        only: frozenset[str] | None = None,
    ) -> Record | None:
        async with self.engine.connect() as conn:
            return await read_record(conn, spec, tenant_id=tenant_id, id=id, alias=alias, only=only)

    async def related(
        self,
        tenant_id: str,
        spec: EntitySpec,
        ids: list[str],
        *,
        only: frozenset[str] | None = None,
    ) -> list[Record | None]:
        async with self.engine.connect() as conn:
            return await read_related(conn, spec, tenant_id=tenant_id, ids=ids, only=only)

    async def push(
        self, tenant_id: str, request: PushRequest, *, binding: Binding | None = None
    ) -> PushResult:
        """Apply a client's changes in one transaction; ``atomic`` applies all or nothing.
        ``binding``: the writer's view (see ``write``)."""
        check_push(request, self.registry, limit_for=self.limits.batch_limit_for)
        async with self.write(tenant_id, binding=binding) as tx:
            result = await apply_push(tx, self.registry, request, defer_last=True)
            if request.atomic and result.rejected:
                result.applied = 0
                result.changed_ids = {}
                tx.discard()
        result.checkpoint = tx.checkpoint
        # echo-free pushes: nobody else committed between the client's since and this push
        result.caught_up = request.since is not None and tx.previous == request.since
        return result

    async def resync(
        self, tenant_id: str, entity: EntitySpec, ids: list[str] | None
    ) -> ResyncResult:
        async with self.write(tenant_id) as tx:
            result = await resync_records(tx, entity, ids)
        result.checkpoint = tx.checkpoint
        return result

    # --- devices and the action log -------------------------------------------------------

    async def register_device(
        self, tenant_id: str, name: str, *, view: Binding | None = None
    ) -> Registration:
        """A new device, bound to ``view`` (None: it sees the whole tenant)."""
        if not name.strip() or len(name) > 255:
            raise BadRequest("a device needs a name of 1 to 255 characters")
        async with self.write(tenant_id) as tx:  # the write road: keyed requests apply once
            return await register_device(tx.conn, tenant_id, name, view=view)

    async def set_device_view(self, tenant_id: str, device_id: str, view: Binding | None) -> bool:
        """Rebind a device (None: unbind), told to every process's credential cache as
        ``remove_device`` is; False when the tenant has no such device."""
        async with self.write(tenant_id) as tx:
            found = tx.revokes = await set_device_view(tx.conn, tenant_id, device_id, view)
        return found

    async def push_actions(
        self,
        tenant_id: str,
        device_id: str,
        actions: list[ActionInput],
        *,
        binding: Binding | None = None,
    ) -> PushActionsResult:
        """Store a device's actions (and apply the entity ones) in one transaction.
        ``binding``: the device's view (see ``write``)."""
        check_request(actions, max_actions=self.limits.max_actions)
        async with self.write(tenant_id, binding=binding) as tx:
            result = await push_actions(
                tx,
                self.registry,
                actions,
                device_id=device_id,
                unsigned_types=self.limits.unsigned_action_types,
                max_bytes=self.limits.max_action_bytes,
            )
            tx.actions = result.accepted
        result.action_seq = tx.action_seq
        return result

    async def actions(
        self,
        tenant_id: str,
        *,
        after: int | None,
        limit: int,
        exclude_device: str | None,
        binding: Binding | None = None,
    ) -> ActionPage:
        """A page of the action log: all of it, or (``binding``) only the actions pushed by
        credentials bound to the same view with the same parameter values."""
        if not 1 <= limit <= self.limits.max_page:
            raise BadRequest(f"limit must be between 1 and {self.limits.max_page}")
        async with read_transaction(self.engine) as conn:
            return await read_actions(
                conn,
                tenant_id,
                after=after,
                limit=limit,
                exclude_device=exclude_device,
                binding=binding_identity(binding),
            )

    async def remove_device(self, tenant_id: str, device_id: str) -> bool:
        """Revoke the token; every process's credential cache hears of it (this one after
        the commit, even a keyed request's later one; others by the notification
        ``remove_device`` sends at commit)."""
        async with self.write(tenant_id) as tx:
            removed = tx.revokes = await remove_device(tx.conn, tenant_id, device_id)
        return removed

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke an API key, told to every process as ``remove_device`` is; False when there
        is no such key."""
        async with write_transaction(self.engine) as conn:
            tenant_id = await revoke_key(conn, key_id)
        if tenant_id is not None:
            self.broker.publish(tenant_id, 0, kind=CREDENTIALS)
        return tenant_id is not None

    async def is_device_removed(self, token: str) -> bool:
        async with self.engine.connect() as conn:
            return await is_removed(conn, token)

    def write(
        self, tenant_id: str, *, now: datetime | None = None, binding: Binding | None = None
    ) -> AbstractAsyncContextManager[WriteTx]:
        """The transaction edge of every writer: ``async with service.write(tenant) as tx``
        stamps, notifies, commits and publishes on exit (see ``open_write``). ``binding``:
        the writer's view, which then writes only records it shows before and after
        (``app.engine.write.guard``)."""
        guard = None if binding is None else ViewGuard(self.registry, binding)
        return open_write(self.engine, self.broker, tenant_id, now=now, guard=guard)

    def entity(self, name: str) -> EntitySpec:
        spec = self.registry.by_any_name(name)
        if spec is None:
            raise BadRequest(f"unknown entity {name!r}")
        return spec
