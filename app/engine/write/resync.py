"""Feed repair: give records a new seq (version unchanged) so every puller and subscriber
receives them again, after rows were written to the database behind the server's back."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from app.db import in_values
from app.engine.registry import EntitySpec
from app.engine.values import parse_id
from app.engine.write.rows import lock_table
from app.engine.write.tx import WriteTx


@dataclass
class ResyncResult:
    resynced: int = 0
    not_found: list[str] = field(default_factory=list)
    checkpoint: int = 0


async def resync_records(tx: WriteTx, spec: EntitySpec, ids: list[str] | None) -> ResyncResult:
    """Renumber the named records (all of the entity's when ``ids`` is None), tombstones
    included, in their current seq order; ``updated_at`` moves so date-based pullers see
    them too."""
    conn, tenant_id, seqs = tx.conn, tx.tenant_id, tx.seqs
    t = spec.table
    await lock_table(conn, spec, tenant_id)
    query = sa.select(t.c.id, t.c.seq).where(t.c.tenant_id == tenant_id)
    result = ResyncResult()
    wanted: list[str] = []
    canonical: dict[str, str | None] = {}
    if ids is not None:
        canonical = {raw: parse_id(raw) for raw in ids}
        wanted = sorted({c for c in canonical.values() if c is not None})
        query = query.where(in_values(conn, t.c.id, wanted)) if wanted else query.where(sa.false())
    # (sorted here: with ORDER BY seq SQLite walks the whole feed index for a few ids)
    found = [
        row.id for row in sorted((await conn.execute(query)).all(), key=lambda r: (r.seq, r.id))
    ]
    if ids is not None:
        present = set(found)
        # as given, in input order, once each (a malformed id names no record either)
        result.not_found = [raw for raw, c in canonical.items() if c not in present]
    if found:
        stmt = (
            sa.update(t)
            .where(t.c.tenant_id == tenant_id, t.c.id == sa.bindparam("b_id"))
            .values(seq=sa.bindparam("b_seq"), updated_at=tx.now)
        )
        await conn.execute(stmt, [{"b_id": id_, "b_seq": seqs.take()} for id_ in found])
        seqs.wrote(t)
    result.resynced = len(found)
    return result
