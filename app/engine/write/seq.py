"""Numbering changes: the per-tenant counter that makes commit order equal seq order.

Inside a write transaction every changed row first gets a negative placeholder ``-k``
(``k`` = 1, 2, … in the order the changes were made). ``stamp`` runs last, just before
commit: it takes ``n`` numbers from the tenant's counter row (which locks that row until
commit, serialising the tenant's writers only for the stamping and the commit) and turns
each placeholder ``-k`` into ``base + k`` with one UPDATE per touched table, and announces
the new seq to other processes (a NOTIFY, delivered at commit). On PostgreSQL these are one
statement (``app.db.bump``), so the tenant's other writers wait for one round trip and the
commit, not for every statement a busy event loop is slow to send.

The last write of a transaction can be *deferred* instead (``defer``): its rows keep their
placeholders in memory and ``stamp`` writes them with their final numbers, right after taking
the counter. A bulk request that changes one entity then writes each row once, not twice.
The counter row is then locked during that write too, so the write must not wait for a row
lock of a transaction that waits for the counter: it is deferred only while the transaction
holds its rows' (tenant, table) scope alone (``lock_keys``: large batches and cleanSync on
PostgreSQL, always on SQLite), since every engine write to an entity row holds that scope,
at least shared.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import Notice, Then, bump, notify_commit, upsert_rows
from app.engine.models import Tenant

TENANTS = Tenant.__table__  # type: ignore[attr-defined]
Stored = dict[str, dict[str, Any]] | None
"""Rows as the database holds them, by id (``upsert_rows``)."""


@dataclass
class SeqAllocator:
    """Placeholder numbers for one transaction's changes, and where they were written."""

    tenant_id: str
    count: int = 0
    tables: set[sa.Table] = field(default_factory=set)
    """Tables with placeholder rows in the database (``wrote``); stamped in a stable order."""
    deferred: tuple[sa.Table, list[dict[str, Any]], Stored] | None = None
    """Whole rows not written yet, with placeholder seqs, and the stored rows (``defer``)."""

    def take(self) -> int:
        self.count += 1
        return -self.count

    def mark(self) -> tuple[int, frozenset[sa.Table]]:
        """Where the numbering stands, for ``rewind``."""
        return self.count, frozenset(self.tables)

    def rewind(self, mark: tuple[int, frozenset[sa.Table]]) -> None:
        """Forget the placeholders taken since ``mark``: their rows were rolled back to a
        savepoint (``app.engine.write.guard``)."""
        self.count, self.tables = mark[0], set(mark[1])

    def wrote(self, table: sa.Table) -> None:
        """Rows of ``table`` with placeholders were written: ``stamp`` renumbers them."""
        self.tables.add(table)

    def defer(self, table: sa.Table, rows: list[dict[str, Any]], stored: Stored = None) -> None:
        """Keep the transaction's last write of whole rows for ``stamp``. Nothing may read
        these rows in this transaction afterwards; there is one deferred write at most.
        ``stored``: as for ``upsert_rows``."""
        assert self.deferred is None, "one deferred write per transaction"
        if rows:
            self.deferred = (table, rows, stored)

    async def flush(self, conn: AsyncConnection) -> None:
        """Write a deferred batch as it is (with placeholders), e.g. before a dry run's
        rollback, so that it fails exactly as the real write would."""
        if self.deferred is not None:
            table, rows, stored = self.deferred
            self.deferred = None
            await upsert_rows(conn, table, rows, stored)
            self.wrote(table)


async def stamp(conn: AsyncConnection, seqs: SeqAllocator) -> int:
    """Number the rows last, just before commit, and announce the new seq to other processes
    (delivered at commit): the tenant row lock then covers only the stamping and the commit,
    and commit order equals seq order. Returns the tenant's seq.

    Without a deferred write, taking the numbers, renumbering every touched table and the
    announcement are one ``bump`` (one statement where the database can: the lock is held
    for one round trip). A deferred write needs the numbers before its rows are sent, so
    there the steps are statements of their own."""
    if seqs.count == 0:
        await seqs.flush(conn)
        return await current_seq(conn, seqs.tenant_id)
    tables = sorted(seqs.tables, key=lambda t: t.name)  # renumbered alike by every writer
    params = {"tenant": seqs.tenant_id, "count": seqs.count}
    renumber = [_renumbering(table) for table in tables]
    if seqs.deferred is None:
        key = ("changes", *(t.name for t in tables))
        notice = Notice(seqs.tenant_id, "changes")
        return await bump(conn, COUNTER, renumber, key=key, params=params, notice=notice)
    top = int((await conn.execute(COUNTER, params)).scalar_one())
    table, rows, stored = seqs.deferred
    seqs.deferred = None
    await upsert_rows(conn, table, rows, stored, base=top - seqs.count)
    for build in renumber:
        await conn.execute(build(sa.literal(top)), params)
    await notify_commit(conn, seqs.tenant_id, "changes", top)
    return top


COUNTER = (
    sa.update(TENANTS)
    .where(TENANTS.c.id == sa.bindparam("tenant"))
    .values(seq=TENANTS.c.seq + sa.bindparam("count", type_=sa.BigInteger))
    .returning(TENANTS.c.seq)
)
"""Take ``count`` numbers from ``tenant``'s counter; returns the last (built once)."""


@functools.cache
def _renumbering(table: sa.Table) -> Then:
    """The UPDATE that turns ``table``'s placeholders ``-k`` into ``top - count + k`` (the
    created_seq of a row created in this transaction too); ``tenant`` and ``count`` are
    parameters, as in ``COUNTER``."""
    tenant: sa.BindParameter[str] = sa.bindparam("tenant")
    count = sa.bindparam("count", type_=sa.BigInteger)

    def build(top: sa.ColumnElement[Any]) -> sa.Update:
        base = top - count
        return (
            sa.update(table)
            .where(table.c.tenant_id == tenant, table.c.seq < 0)
            .values(
                seq=base - table.c.seq,
                created_seq=sa.case(
                    (table.c.created_seq < 0, base - table.c.created_seq),
                    else_=table.c.created_seq,
                ),
            )
        )

    return build


async def current_seq(conn: AsyncConnection, tenant_id: str) -> int:
    seq = (
        await conn.execute(sa.select(TENANTS.c.seq).where(TENANTS.c.id == tenant_id))
    ).scalar_one_or_none()
    return int(seq or 0)
