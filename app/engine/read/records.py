"""Reading records for browsing: a page of an entity (ordered by id, with an opaque cursor),
its count, one record by id or alias, and related records by id in one ``IN`` query.

These are the list/get queries and the related-object batches of the API; the delta feed
(``changes``) is another read (``app/engine/read/changes.py``).

Browsing through a view passes ``only``, the ids the view shows (``visible_ids`` in
``app/engine/views/visible.py``): every read is then restricted to them. A view shows live
records only, so ``include_deleted`` lists no tombstone through a view."""

from __future__ import annotations

import base64
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import in_values
from app.engine.registry import EntitySpec
from app.engine.values import ID_RULE, parse_id
from app.engine.write.items import find_surrogate, valid_text
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
    """The record id a cursor names; anything else (not base64, not UTF-8, a NUL, a
    non-ASCII character) is refused rather than compared with the ids."""
    try:
        decoded = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        decoded = ""
    if not decoded or "\x00" in decoded or find_surrogate(decoded) is not None:
        raise BadRequest(f"cursor {cursor[:40]!r} is not one this server issued")
    return decoded


def _filters(
    conn: AsyncConnection,
    spec: EntitySpec,
    tenant_id: str,
    *,
    alias: str | None,
    include_deleted: bool,
    only: Set[str] | None,
) -> list[sa.ColumnElement[bool]]:
    t = spec.table
    conds = [t.c.tenant_id == tenant_id]
    if not include_deleted or only is not None:  # a view shows no tombstone
        conds.append(t.c.deleted_at.is_(None))
    if alias is not None:
        conds.append(alias_is(t, alias))
    if only is not None:
        conds.append(_within(conn, t, only))
    return conds


def _within(conn: AsyncConnection, table: sa.Table, only: Set[str]) -> sa.ColumnElement[bool]:
    """The condition "one of the ids a view shows" (none: nothing, without an empty ``IN``)."""
    return in_values(conn, table.c.id, sorted(only)) if only else sa.false()


def alias_is(table: sa.Table, alias: str) -> sa.ColumnElement[bool]:
    """The condition "this alias": text no alias can hold (a NUL, an unpaired surrogate,
    which the normalizer refuses) matches nothing, without being sent to the database
    (PostgreSQL would refuse it where SQLite compares it: both answer alike)."""
    return table.c.alias == alias if valid_text(alias) else sa.false()


async def read_records(
    conn: AsyncConnection,
    spec: EntitySpec,
    *,
    tenant_id: str,
    first: int,
    after_id: str | None,
    alias: str | None,
    include_deleted: bool,
    only: Set[str] | None = None,
) -> RecordPage:
    """At most ``first`` of the tenant's records with ids above ``after_id``, in id order
    (one statement: it reads one more to know whether a next page exists)."""
    t = spec.table
    conds = _filters(conn, spec, tenant_id, alias=alias, include_deleted=include_deleted, only=only)
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
    only: Set[str] | None = None,
) -> int:
    """How many records the same filters match on every page (the cursor aside)."""
    conds = _filters(conn, spec, tenant_id, alias=alias, include_deleted=include_deleted, only=only)
    return int((await conn.execute(sa.select(sa.func.count()).where(*conds))).scalar_one())


async def read_record(
    conn: AsyncConnection,
    spec: EntitySpec,
    *,
    tenant_id: str,
    id: str | None,
    alias: str | None,
    only: Set[str] | None = None,
) -> Record | None:
    """The live record with that id or alias (exactly one of the two), or None: a deleted
    record is not found, nor one outside ``only``."""
    if (id is None) == (alias is None):
        raise BadRequest("give exactly one of id and alias")
    t = spec.table
    conds = [t.c.tenant_id == tenant_id, t.c.deleted_at.is_(None)]
    if id is not None:
        canonical = parse_id(id)
        if canonical is None:
            raise BadRequest(f"id {id!r} is not an id ({ID_RULE})")
        conds.append(t.c.id == canonical)
    elif alias is not None:
        conds.append(alias_is(t, alias))
    if only is not None:
        conds.append(_within(conn, t, only))
    return (await conn.execute(sa.select(t).where(*conds))).one_or_none()


async def read_related(
    conn: AsyncConnection,
    spec: EntitySpec,
    *,
    tenant_id: str,
    ids: Sequence[str],
    only: Set[str] | None = None,
) -> list[Record | None]:
    """The live records with these ids, in the order of ``ids`` (None where there is no
    such record, or it is outside ``only``): one ``IN`` query for a whole batch, never one
    per id, and none when no id is left to read."""
    wanted = list(ids) if only is None else [i for i in ids if i in only]
    if not wanted:
        return [None] * len(ids)
    t = spec.table
    query = sa.select(t).where(
        t.c.tenant_id == tenant_id,
        t.c.deleted_at.is_(None),
        in_values(conn, t.c.id, wanted),
    )
    found = {row.id: row for row in (await conn.execute(query)).all()}
    return [found.get(i) for i in ids]
