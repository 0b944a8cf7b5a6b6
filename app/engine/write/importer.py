"""``syncgraph import``: a ``sync`` payload from a file, through the same engine as the API.

Each entity's items are split into batches under its limit, applied in dependency order,
one transaction per batch (a dry run uses one transaction for all and rolls it back, so
later batches still see earlier ones). cleanSync for an imported entity runs once at the
end, over everything the import named, with the same safeguards as the API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.db import read_transaction
from app.engine.registry import EntitySpec
from app.engine.service import SyncService
from app.engine.write.items import ItemError
from app.engine.write.rows import lock_table
from app.engine.write.sync import Batch, EntityResult, apply_sync, clean_entity, live_ids
from app.engine.write.tx import WriteTx
from app.errors import BadRequest, SyncError


@dataclass
class ImportBatch:
    spec: EntitySpec
    start: int
    items: list[dict[str, Any]]

    def __str__(self) -> str:
        return f"{self.spec.plural}[{self.start}:{self.start + len(self.items)}]"


@dataclass
class ImportReport:
    entities: dict[str, EntityResult] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    checkpoint: int = 0
    dry_run: bool = False


class ImportFailed(Exception):
    """A batch was refused after others were committed. Not a ``SyncError``: the CLI reports
    it as a stopped import (exit 1), not as a refused command."""

    def __init__(self, batch: ImportBatch, applied: list[str], cause: Exception) -> None:
        done = ", ".join(applied) if applied else "none"
        self.message = f"batch {batch} failed: {cause}. Applied before it: {done}"
        super().__init__(self.message)
        self.batch, self.applied, self.cause = batch, applied, cause


def plan_batches(service: SyncService, payload: Any) -> list[ImportBatch]:
    if not isinstance(payload, dict):
        raise BadRequest("the file must hold a JSON object like the sync input")
    unknown = [k for k in payload if service.registry.by_any_name(k) is None]
    if unknown:
        raise BadRequest(f"unknown entities in the file: {', '.join(unknown)}")
    batches: list[ImportBatch] = []
    for spec in service.registry.ordered():
        entry = payload.get(spec.plural)
        if entry is None:
            continue
        data = entry.get("data") if isinstance(entry, dict) else entry
        if not isinstance(data, list):
            raise BadRequest(f"{spec.plural}: expected {{'data': [...]}} or a list")
        size = service.limits.batch_limit_for(spec.plural)
        batches += [ImportBatch(spec, i, data[i : i + size]) for i in range(0, len(data), size)]
    return batches


async def run_import(
    service: SyncService,
    tenant_id: str,
    payload: Any,
    *,
    clean: set[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Callable[[ImportBatch, EntityResult], None] | None = None,
) -> ImportReport:
    batches = plan_batches(service, payload)
    clean = set(clean or ()) | _clean_in_file(payload)
    clean_specs = [service.entity(name) for name in sorted(clean)]
    report = ImportReport(dry_run=dry_run)
    if not dry_run:
        await _import(None, service, tenant_id, batches, clean_specs, report, force, progress)
        return report
    async with service.write(tenant_id) as tx:  # one transaction for all, rolled back
        await _import(tx, service, tenant_id, batches, clean_specs, report, force, progress)
        tx.discard()
    report.checkpoint = tx.checkpoint
    return report


async def _import(
    tx: WriteTx | None,
    service: SyncService,
    tenant_id: str,
    batches: list[ImportBatch],
    clean_specs: list[EntitySpec],
    report: ImportReport,
    force: bool,
    progress: Callable[[ImportBatch, EntityResult], None] | None,
) -> None:
    """Apply the batches, each in a transaction of its own (``tx`` None) or all in ``tx``."""
    if tx is not None:  # one transaction (a dry run): the tables to clean are held alone
        # from the start, in the order every writer locks them (none upgrades a lock later)
        for spec in service.registry.ordered():
            if spec in clean_specs:
                await lock_table(tx.conn, spec, tenant_id)
    live_before = {s.plural: await _live(tx, service, tenant_id, s) for s in clean_specs}
    for batch in batches:
        try:
            result = await _apply_batch(tx, service, tenant_id, batch)
        except SyncError as exc:
            raise ImportFailed(batch, report.applied, exc) from exc
        _merge(report, batch, result)
        report.applied.append(str(batch))
        if progress is not None:
            progress(batch, result)
    for spec in clean_specs:
        total = report.entities.setdefault(spec.plural, EntityResult(spec=spec, ids=[]))
        await _clean(tx, service, tenant_id, spec, total, live_before[spec.plural], force)


async def _live(
    tx: WriteTx | None, service: SyncService, tenant_id: str, spec: EntitySpec
) -> set[str]:
    if tx is not None:
        return await live_ids(tx.conn, spec, tenant_id)
    async with read_transaction(service.engine) as conn:
        return await live_ids(conn, spec, tenant_id)


async def _apply_batch(
    tx: WriteTx | None, service: SyncService, tenant_id: str, batch: ImportBatch
) -> EntityResult:
    batches = {batch.spec.plural: Batch(data=batch.items)}
    if tx is None:
        result = await service.sync(tenant_id, batches)
    else:
        result = await apply_sync(tx, service.registry, batches)
    return result.entities[batch.spec.plural]


async def _clean(
    tx: WriteTx | None,
    service: SyncService,
    tenant_id: str,
    spec: EntitySpec,
    total: EntityResult,
    live_before: set[str],
    force: bool,
) -> None:
    """cleanSync over everything the import named, in ``tx`` or a transaction of its own."""
    if tx is not None:
        await clean_entity(tx, spec, total, live_before, force=force)
        return
    async with service.write(tenant_id) as own:
        await clean_entity(own, spec, total, live_before, force=force)


def _merge(report: ImportReport, batch: ImportBatch, result: EntityResult) -> None:
    total = report.entities.setdefault(batch.spec.plural, EntityResult(spec=batch.spec, ids=[]))
    total.inserted += result.inserted
    total.updated += result.updated
    total.unchanged += result.unchanged
    total.ids += result.ids
    total.errors += [_shift(e, batch.start) for e in result.errors]


def _shift(error: ItemError, offset: int) -> ItemError:
    error.index += offset
    return error


def _clean_in_file(payload: dict[str, Any]) -> set[str]:
    """Entities the file itself marks ``cleanSync: true``, as the API would honour them."""
    return {
        plural
        for plural, entry in payload.items()
        if isinstance(entry, dict) and entry.get("cleanSync") is True
    }
