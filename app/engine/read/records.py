"""Reading records for browsing: a page of an entity (ordered by id, with an opaque cursor),
its count, one record by id or alias, and related records by id in one ``IN`` query.

These are the list/get queries and the related-object batches of the API; the delta feed
(``changes``) is another read (``app/engine/read/changes.py``)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import in_values
from app.engine.registry import EntitySpec
from app.engine.values import ID_RULE, parse_id
from app.errors import BadRequest

Record = sa.Row[Any]
"""A record as read: its columns as attributes (``row.id``, ``row.alias``)."""


@dataclass
class RecordPage:
    """One page of records in id order; ``end_cursor`` resumes after its last record."""

    nodes: Sequence[Record]
    end_cursor: str | None
    has_next_page: bool


def encode_cursor(record_id: str) -> str:
    return base64.urlsafe_b64encode(record_id.encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except ValueError:
        raise BadRequest(f"cursor {cursor!r} is not one this server issued") from None


def _filters(
    spec: EntitySpec, tenant_id: str, *, alias: str | None, include_deleted: bool
) -> list[sa.ColumnElement[bool]]:
    t = spec.table
    conds = [t.c.tenant_id == tenant_id]
    if not include_deleted:
        conds.append(t.c.deleted_at.is_(None))
    if alias is not None:
        conds.append(t.c.alias == alias)
    return conds


async def read_records(
    conn: AsyncConnection,
    spec: EntitySpec,
    *,
    tenant_id: str,
    first: int,
    after_id: str | None,
    alias: str | None,
    include_deleted: bool,
) -> RecordPage:
    """At most ``first`` of the tenant's records with ids above ``after_id``, in id order
    (one statement: it reads one more to know whether a next page exists)."""
    t = spec.table
    conds = _filters(spec, tenant_id, alias=alias, include_deleted=include_deleted)
    if after_id is not None:
        conds.append(t.c.id > after_id)
    query = sa.select(t).where(*conds).order_by(t.c.id).limit(first + 1)
    rows = (await conn.execute(query)).all()
    nodes = rows[:first]
    return RecordPage(
        nodes=nodes,
        end_cursor=encode_cursor(nodes[-1].id) if nodes else None,
        has_next_page=len(rows) > first,
    )


async def count_records(
    conn: AsyncConnection,
    spec: EntitySpec,
    *,
    tenant_id: str,
    alias: str | None,
    include_deleted: bool,
) -> int:
    """How many records the same filters match on every page (the cursor aside)."""
    conds = _filters(spec, tenant_id, alias=alias, include_deleted=include_deleted)
    return int((await conn.execute(sa.select(sa.func.count()).where(*conds))).scalar_one())


async def read_record(
    conn: AsyncConnection,
    spec: EntitySpec,
    *,
    tenant_id: str,
    id: str | None,
    alias: str | None,
) -> Record | None:
    """The live record with that id or alias (exactly one of the two), or None: a deleted
    record is not found."""
    if (id is None) == (alias is None):
        raise BadRequest("give exactly one of id and alias")
    t = spec.table
    conds = [t.c.tenant_id == tenant_id, t.c.deleted_at.is_(None)]
    if id is not None:
        canonical = parse_id(id)
        if canonical is None:
            raise BadRequest(f"id {id!r} is not an id ({ID_RULE})")
        conds.append(t.c.id == canonical)
    else:
        conds.append(t.c.alias == alias)
    return (await conn.execute(sa.select(t).where(*conds))).one_or_none()


async def read_related(
    conn: AsyncConnection, spec: EntitySpec, *, tenant_id: str, ids: Sequence[str]
) -> list[Record | None]:
    """The live records with these ids, in the order of ``ids`` (None where there is no
    such record): one ``IN`` query for a whole batch, never one per id."""
    t = spec.table
    query = sa.select(t).where(
        t.c.tenant_id == tenant_id,
        t.c.deleted_at.is_(None),
        in_values(conn, t.c.id, list(ids)),
    )
    found = {row.id: row for row in (await conn.execute(query)).all()}
    return [found.get(i) for i in ids]
