"""The accelerator ``rowcodec`` against its plain twin (``app.db.rows.PlainRows``): the same
rows in, the same data stored and the same rows read back, for every entity table on both
backends (JSON objects and lists, dates, times in two zones, floats, None, placeholder seqs)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from app import accel
from app.accel.rowcodec import RowCodec
from app.db import backend_of, read_transaction, write_transaction
from app.db.backend import RowStore
from app.db.rows import PlainRows
from app.domains import load_registry
from app.engine.tenants import create_tenant
from app.state import AppState

TABLES = {spec.name: spec.table for spec in load_registry().entities.values()}
PARIS = timezone(timedelta(hours=1))
IDS = [str(uuid.UUID(int=k + 1)) for k in range(12)]


def value(column: sa.Column[Any], k: int) -> Any:
    """Column values as the engine holds them: a few of each kind, with repeats and None."""
    if column.name == "id":
        return IDS[k]
    if column.name in ("seq", "created_seq"):
        return 7 if column.name == "created_seq" and k % 3 == 0 else -(k + 1)
    if k % 5 == 4 and column.nullable:
        return None
    kind = column.type
    if isinstance(kind, sa.DateTime):
        moment = datetime(2026, 1, 1 + k % 3, 8, 30, k % 2, 123456, tzinfo=UTC)
        return moment.astimezone(PARIS) if k % 4 == 1 else moment
    if isinstance(kind, sa.Date):
        return date(2004, 8, 1 + k % 7)
    if isinstance(kind, sa.Boolean):
        return bool(k % 2)
    if isinstance(kind, sa.JSON):
        shapes = [{"k": k, "flags": [True, None], "x": 1.25, "s": "é"}, [f"x{k}", 2], []]
        return shapes[k % 3]
    if isinstance(kind, sa.Float):
        return k + 0.1
    if isinstance(kind, sa.Integer):
        return k
    return f"{column.name[:3]}-{k}-é"  # distinct per row: aliases are unique per tenant


def rows_of(table: sa.Table, tenant_id: str, *, changed: bool = False) -> list[dict[str, Any]]:
    rows = [{c.name: value(c, k) for c in table.columns} for k in range(len(IDS))]
    for k, row in enumerate(rows):
        row["tenant_id"] = tenant_id
        if changed and k % 2:  # every second row changes its alias, the others keep it
            row["alias"] = f"moved-{k}"
        if changed:
            row["version"] = 2
    return rows


def stores(engine: AsyncEngine) -> dict[str, RowStore]:
    """Both row stores of ``engine``'s database, each from a backend of its own."""
    kind = type(backend_of(engine))
    with accel.only("rowcodec"):
        codec = kind().rows
    with accel.only():
        plain = kind().rows
    assert isinstance(codec, RowCodec)
    assert isinstance(plain, PlainRows)
    return {"codec": codec, "plain": plain}


async def stored_text(
    engine: AsyncEngine, table: sa.Table, tenant_id: str
) -> list[tuple[Any, ...]]:
    """The rows as the database holds them, every column as text (not as a reader decodes
    them): what was written, to the byte."""
    columns = [sa.cast(c, sa.Text) for c in table.columns if c.name != "tenant_id"]
    query = sa.select(*columns).where(table.c.tenant_id == tenant_id).order_by(table.c.id)
    async with read_transaction(engine) as conn:
        return [tuple(row) for row in await conn.execute(query)]


async def write_both(state: AppState, table: sa.Table) -> dict[str, list[Any]]:
    """Each store writes the same rows with final seqs (``base``), then an update of them
    with the stored rows as its hint and placeholder seqs, into a tenant of its own; returns
    per store its tenant and the data stored after each write."""
    written: dict[str, list[Any]] = {}
    for name, store in stores(state.engine).items():
        async with write_transaction(state.engine) as conn:
            tenant_id = await create_tenant(conn, f"codec-{uuid.uuid4().hex[:6]}")
            first = rows_of(table, tenant_id)
            await store.upsert(conn, table, first, base=100)
        after_first = await stored_text(state.engine, table, tenant_id)
        async with write_transaction(state.engine) as conn:
            stored = {row["id"]: row for row in first}
            await store.upsert(conn, table, rows_of(table, tenant_id, changed=True), stored)
        after_second = await stored_text(state.engine, table, tenant_id)
        written[name] = [tenant_id, after_first, after_second]
    return written


@pytest.mark.parametrize("entity", list(TABLES))
async def test_both_row_stores_store_the_same_data(state: AppState, entity: str) -> None:
    table = TABLES[entity]
    written = await write_both(state, table)
    codec, plain = written["codec"][1:], written["plain"][1:]
    assert [len(rows) for rows in plain] == [len(IDS), len(IDS)]
    assert codec == plain
    assert codec[0] != codec[1]  # the update changed what is stored


@pytest.mark.parametrize("entity", list(TABLES))
async def test_both_row_stores_read_the_same_rows(state: AppState, entity: str) -> None:
    """By id and by alias, locked or not, with a column skipped or not; a key that names no
    row is simply not found."""
    table = TABLES[entity]
    tenant_id = (await write_both(state, table))["plain"][0]
    found: dict[str, list[list[dict[str, Any]]]] = {}
    lookups = [
        ("id", [*IDS[::2], "no-such-id"], False, ()),
        ("id", IDS, True, ("created_at",)),
        ("alias", ["moved-1", "moved-3", "ali-2-é", "nothing"], False, ()),
    ]
    for name, store in stores(state.engine).items():
        async with write_transaction(state.engine) as conn:
            found[name] = [
                sorted(
                    await store.select(conn, table, tenant_id, key, keys, lock=lock, skip=skip),
                    key=lambda row: str(row["id"]),
                )
                for key, keys, lock, skip in lookups
            ]
    assert [len(rows) for rows in found["plain"]] == [6, 12, 3]
    assert found["codec"] == found["plain"]
    assert "created_at" not in found["plain"][1][0]
