"""Numbering changes: the per-tenant counter that makes commit order equal seq order.

Inside a write transaction every changed row first gets a negative placeholder ``-k``
(``k`` = 1, 2, … in the order the changes were made). ``stamp`` runs last, just before
commit: it takes ``n`` numbers from the tenant's counter row (which locks that row until
commit, serialising the tenant's writers only for the stamping and the commit) and turns
each placeholder ``-k`` into ``base + k`` with one UPDATE per touched table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.engine.models import Tenant

TENANTS = Tenant.__table__  # type: ignore[attr-defined]


@dataclass
class SeqAllocator:
    """Placeholder numbers for one transaction's changes, and the tables they touched."""

    tenant_id: str
    count: int = 0
    tables: set[sa.Table] = field(default_factory=set)
    """Tables with placeholder rows; stamped in a stable order."""

    def take(self, table: sa.Table) -> int:
        self.count += 1
        self.tables.add(table)
        return -self.count


async def stamp(conn: AsyncConnection, seqs: SeqAllocator) -> int:
    """Number the rows last, just before commit: the tenant row lock then covers only the
    stamping and the commit, and commit order equals seq order. Returns the tenant's seq."""
    if seqs.count == 0:
        return await current_seq(conn, seqs.tenant_id)
    top = (
        await conn.execute(
            sa.update(TENANTS)
            .where(TENANTS.c.id == seqs.tenant_id)
            .values(seq=TENANTS.c.seq + seqs.count)
            .returning(TENANTS.c.seq)
        )
    ).scalar_one()
    base = top - seqs.count
    for table in sorted(seqs.tables, key=lambda t: t.name):
        await conn.execute(
            sa.update(table)
            .where(table.c.tenant_id == seqs.tenant_id, table.c.seq < 0)
            .values(
                seq=base - table.c.seq,
                created_seq=sa.case(
                    (table.c.created_seq < 0, base - table.c.created_seq),
                    else_=table.c.created_seq,
                ),
            )
        )
    return int(top)


async def current_seq(conn: AsyncConnection, tenant_id: str) -> int:
    seq = (
        await conn.execute(sa.select(TENANTS.c.seq).where(TENANTS.c.id == tenant_id))
    ).scalar_one_or_none()
    return int(seq or 0)
