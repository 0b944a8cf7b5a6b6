"""Tombstone retention: purge old tombstones and move each tenant's horizon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.engine.models import ViewSet
from app.engine.registry import Registry
from app.engine.write.rows import lock_table
from app.engine.write.seq import TENANTS

VIEW_SETS = ViewSet.__table__  # type: ignore[attr-defined]


async def purge_tombstones(
    conn: AsyncConnection, registry: Registry, *, retention_days: int, now: datetime | None = None
) -> int:
    """Delete tombstones older than the retention; a checkpoint below a tenant's new
    ``purged_seq`` then gets ``fullSyncRequired``. Returns how many rows were purged."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    tenants: set[str] = set()
    for spec in registry.ordered():
        t = spec.table
        old = sa.and_(t.c.deleted_at.is_not(None), t.c.deleted_at < cutoff)
        tenants.update(
            (await conn.execute(sa.select(t.c.tenant_id).where(old).distinct())).scalars()
        )
    purged = 0
    for tenant_id in sorted(tenants):
        purged += await _purge_tenant(conn, registry, tenant_id, cutoff)
    # the sets view-bound clients held (and the notes of answers from their checkpoints),
    # unused for as long: those clients pull from null
    await conn.execute(sa.delete(VIEW_SETS).where(VIEW_SETS.c.created_at < cutoff))
    return purged


async def _purge_tenant(
    conn: AsyncConnection, registry: Registry, tenant_id: str, cutoff: datetime
) -> int:
    """One tenant's purge, holding each of its tables alone (writers may hold the tenant's
    counter while they wait for a row: see ``seq``), in the order writers lock them."""
    horizon = 0
    purged = 0
    for spec in registry.ordered():
        t = spec.table
        await lock_table(conn, spec, tenant_id)
        old = sa.and_(
            t.c.tenant_id == tenant_id, t.c.deleted_at.is_not(None), t.c.deleted_at < cutoff
        )
        top = (await conn.execute(sa.select(sa.func.max(t.c.seq)).where(old))).scalar()
        if top is None:
            continue
        horizon = max(horizon, int(top))
        purged += (await conn.execute(sa.delete(t).where(old))).rowcount or 0
    if horizon:
        await conn.execute(
            sa.update(TENANTS)
            .where(TENANTS.c.id == tenant_id, TENANTS.c.purged_seq < horizon)
            .values(purged_seq=horizon)
        )
    return purged
