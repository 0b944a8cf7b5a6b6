"""Tombstone retention: purge old tombstones and move each tenant's horizon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.engine.registry import Registry
from app.engine.seq import TENANTS


async def purge_tombstones(
    conn: AsyncConnection, registry: Registry, *, retention_days: int, now: datetime | None = None
) -> int:
    """Delete tombstones older than the retention; a checkpoint below a tenant's new
    ``purged_seq`` then gets ``fullSyncRequired``. Returns how many rows were purged."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    horizons: dict[str, int] = {}
    purged = 0
    for spec in registry.ordered():
        t = spec.table
        old = sa.and_(t.c.deleted_at.is_not(None), t.c.deleted_at < cutoff)
        rows = await conn.execute(
            sa.select(t.c.tenant_id, sa.func.max(t.c.seq)).where(old).group_by(t.c.tenant_id)
        )
        for tenant_id, seq in rows.all():
            horizons[tenant_id] = max(horizons.get(tenant_id, 0), int(seq))
        purged += (await conn.execute(sa.delete(t).where(old))).rowcount or 0
    for tenant_id, seq in horizons.items():
        await conn.execute(
            sa.update(TENANTS)
            .where(TENANTS.c.id == tenant_id, TENANTS.c.purged_seq < seq)
            .values(purged_seq=seq)
        )
    return purged
