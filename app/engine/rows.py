"""Reading and writing entity rows: the shapes shared by sync, push and resync."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import lock_keys, upsert_statement
from app.engine.items import camel
from app.engine.references import in_values
from app.engine.registry import EntitySpec
from app.engine.seq import SeqAllocator

PRIMARY_KEY = ("tenant_id", "id")


def new_id() -> str:
    return str(uuid.uuid4())


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def defaults(spec: EntitySpec) -> dict[str, Any]:
    """Column values of a new record before the client's fields are applied."""
    values: dict[str, Any] = {f.name: f.default for f in spec.fields}
    for ref in spec.refs:
        values[ref.column] = [] if ref.many else None
    values["alias"] = None
    return values


def same_data(spec: EntitySpec, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a write would change nothing a client can see (no version bump, no event)."""
    return all(old.get(c) == new.get(c) for c in ("alias", *spec.data_columns))


async def load_rows(
    conn: AsyncConnection,
    spec: EntitySpec,
    tenant_id: str,
    *,
    ids: list[str],
    aliases: list[str] = (),  # type: ignore[assignment]
    lock: bool = True,
) -> list[dict[str, Any]]:
    """Existing rows (tombstones included) named by id or alias, locked for the write.

    On PostgreSQL the keys themselves are locked first (advisory locks, in one sorted order),
    so two transactions creating the same new id or alias serialise instead of both planning
    an insert, and row locks are taken in id order so overlapping writers cannot deadlock."""
    if not ids and not aliases:
        return []
    t = spec.table
    if lock:
        await lock_keys(
            conn,
            f"{tenant_id}:{t.name}",
            [f"i:{i}" for i in ids] + [f"a:{a}" for a in aliases],
        )
    # One indexed query per key kind: "id IN … OR alias IN …" makes both databases scan
    # the tenant's whole range.
    found: dict[str, dict[str, Any]] = {}
    for column, keys in ((t.c.id, ids), (t.c.alias, list(aliases))):
        if not keys:
            continue
        stmt = (
            sa.select(t)
            .where(t.c.tenant_id == tenant_id, in_values(conn, column, keys))
            .order_by(t.c.id)
        )
        if lock and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        result = await conn.execute(stmt)
        columns = list(result.keys())  # zip beats RowMapping by far on 1,000-row batches
        id_at = columns.index("id")
        for row in result:
            found.setdefault(row[id_at], dict(zip(columns, row, strict=True)))
    return [found[key] for key in sorted(found)]


async def write_rows(conn: AsyncConnection, spec: EntitySpec, rows: list[dict[str, Any]]) -> None:
    """Insert or overwrite whole rows: one statement for the batch (in id order, the order
    every writer locks in)."""
    if not rows:
        return
    rows = sorted(rows, key=lambda row: str(row["id"]))
    t = spec.table
    update = [c.name for c in t.columns if c.name not in PRIMARY_KEY]
    await conn.execute(upsert_statement(conn, t, keys=list(PRIMARY_KEY), update=update), rows)


def prepare_write(
    spec: EntitySpec,
    seqs: SeqAllocator,
    *,
    tenant_id: str,
    existing: dict[str, Any] | None,
    merged: dict[str, Any],
    now: datetime,
    changed_at: datetime | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """The full row to write for one change, with its placeholder seq.

    A match on a tombstone revives it as a new record (``created_seq`` renumbered) so that
    pullers receive it as inserted."""
    placeholder = seqs.take(spec.table)
    revived = existing is None or existing["deleted_at"] is not None
    row = {c: merged.get(c) for c in ("alias", *spec.data_columns)}
    row.update(
        tenant_id=tenant_id,
        id=merged["id"],
        version=1 if existing is None else existing["version"] + 1,
        created_at=now if existing is None else existing["created_at"],
        updated_at=now,
        changed_at=changed_at or now,
        actor=actor,
        seq=placeholder,
        created_seq=placeholder if revived else existing["created_seq"],  # type: ignore[index]
        deleted_at=None,
    )
    return row


async def tombstone(
    conn: AsyncConnection,
    spec: EntitySpec,
    seqs: SeqAllocator,
    *,
    tenant_id: str,
    ids: list[str],
    now: datetime,
    changed_at: datetime | None = None,
    actor: str | None = None,
) -> None:
    """Mark live records deleted (one executemany); they stay for pullers to learn of it."""
    if not ids:
        return
    t = spec.table
    stmt = (
        sa.update(t)
        .where(t.c.tenant_id == tenant_id, t.c.id == sa.bindparam("b_id"))
        .values(
            deleted_at=now,
            updated_at=now,
            changed_at=sa.bindparam("b_changed_at"),
            actor=sa.bindparam("b_actor"),
            version=t.c.version + 1,
            seq=sa.bindparam("b_seq"),
        )
    )
    params = [
        {
            "b_id": id_,
            "b_seq": seqs.take(t),
            "b_changed_at": changed_at or now,
            "b_actor": actor,
        }
        for id_ in ids
    ]
    await conn.execute(stmt, params)


def public_record(spec: EntitySpec, row: dict[str, Any]) -> dict[str, Any]:
    """A row as the API shows it (camelCase), for conflict reports and action payloads."""
    record: dict[str, Any] = {"id": row["id"], "alias": row.get("alias")}
    for f in spec.fields:
        value = row.get(f.name)
        record[camel(f.name)] = value.isoformat() if isinstance(value, date) else value
    for ref in spec.refs:
        record[camel(ref.column)] = row.get(ref.column)
    record["version"] = row.get("version")
    for key in ("created_at", "updated_at"):
        value = aware(row.get(key))
        record[camel(key)] = value.isoformat() if value else None
    if row.get("deleted_at") is not None:
        record["deleted"] = True
    return record
