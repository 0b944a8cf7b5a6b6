# No "from __future__ import annotations": resolver annotations name generated types.
"""``mutation sync``: bulk upsert through the engine, answered with a SyncReport."""

from typing import Any

import strawberry

from app.engine.write.sync import EntityResult, SyncResult
from app.graphql.bulkinput import bulk_argument
from app.graphql.catalog import Catalog
from app.graphql.context import require_key
from app.graphql.inputs import sync_batches, to_wire
from app.graphql.reports import SyncCounts

COUNTS = ("inserted", "updated", "unchanged", "deleted", "failed")


def sync_field(catalog: Catalog) -> Any:
    sync_input, sync_report = catalog.sync_input, catalog.sync_report

    async def sync(
        info: strawberry.Info,
        input: sync_input,  # type: ignore[valid-type]
        dry_run: bool | None = False,
        force: bool | None = False,
    ) -> sync_report:  # type: ignore[valid-type]
        principal = require_key(info, "sync:write")
        raw = bulk_argument(info, "input")
        wire = raw if raw is not None else to_wire(input)
        result = await info.context.state.service.sync(
            principal.tenant_id,
            sync_batches(wire, catalog.plurals),
            dry_run=bool(dry_run),
            force=bool(force),
            may_clean=principal.allows("sync:manage"),
            binding=principal.view,
        )
        return report(catalog, result, dry_run=bool(dry_run))

    return strawberry.mutation(
        resolver=sync,
        description="Bulk upsert (mirror a source of truth); see SyncReport.",
    )


def report(catalog: Catalog, result: SyncResult, *, dry_run: bool) -> Any:
    totals = SyncCounts(**{k: result.total(k) for k in COUNTS})
    per_entity = {p: entity_report(catalog, r) for p, r in result.entities.items()}
    return catalog.sync_report(
        checkpoint=str(result.checkpoint), dry_run=dry_run, totals=totals, **per_entity
    )


def entity_report(catalog: Catalog, r: EntityResult) -> Any:
    return catalog.entity_result(
        inserted=r.inserted,
        updated=r.updated,
        unchanged=r.unchanged,
        deleted=r.deleted,
        failed=r.failed,
        ids=r.ids,
        deleted_ids=r.deleted_ids,
        clean_sync=r.clean_sync,
        errors=[catalog.item_error_of(e) for e in r.errors],
    )
