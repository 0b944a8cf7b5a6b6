"""Entity rows written whole and read back by key, as SQLAlchemy Core does it.

This is the design's row store; ``app.accel.rowcodec`` is its speed-up (the same statements
in the drivers' own bulk forms, converters generated per table) and is checked against it:
both give the same rows and store the same data.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

Row = dict[str, Any]
PRIMARY_KEY = ("tenant_id", "id")
SEQ_COLUMNS = ("seq", "created_seq")
"""Written with placeholders (``-k``) until ``seq.stamp`` knows the numbers."""


def renumbered(rows: Sequence[Row], base: int | None) -> Sequence[Row]:
    """The rows with placeholder seqs ``-k`` as ``base + k`` (``base`` None: as they are);
    the rows given are left alone."""
    if base is None:
        return rows
    return [
        {**row, **{c: base - row[c] for c in SEQ_COLUMNS if c in row and row[c] < 0}}
        for row in rows
    ]


class PlainRows:
    """``insert … on conflict (tenant_id, id) do update`` with every column, and ``select``
    by one key column, through SQLAlchemy's own parameter and result processing."""

    def __init__(
        self,
        insert: Callable[[sa.Table], Any],
        in_values: Callable[[sa.ColumnElement[Any], list[Any]], Any],
        *,
        locking: Callable[[sa.Select[Any], sa.ColumnElement[Any]], sa.Select[Any]],
    ) -> None:
        self.insert = insert
        self.in_values = in_values
        self.locking = locking
        """The query with row locks taken in the key column's order (the backend's)."""
        self.upserts: weakref.WeakKeyDictionary[sa.Table, Any] = weakref.WeakKeyDictionary()

    def upsert_statement(self, table: sa.Table) -> Any:
        statement = self.upserts.get(table)
        if statement is None:
            insert = self.insert(table)
            overwrite = {c.name: insert.excluded[c.name] for c in table.columns}
            for key in PRIMARY_KEY:
                del overwrite[key]
            statement = insert.on_conflict_do_update(index_elements=PRIMARY_KEY, set_=overwrite)
            self.upserts[table] = statement
        return statement

    async def upsert(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: Sequence[Row],
        stored: Mapping[str, Row] | None = None,
        *,
        base: int | None = None,
    ) -> None:
        """Insert or overwrite whole rows (every column given); ``base``: see ``renumbered``.
        ``stored`` is only a hint for the accelerated writer (which columns an update may
        leave out of its ``SET``): the data written is the same without it."""
        if rows:
            await conn.execute(self.upsert_statement(table), list(renumbered(rows, base)))

    async def select(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        tenant_id: str,
        key: str,
        values: Sequence[str],
        *,
        lock: bool = False,
        skip: tuple[str, ...] = (),
    ) -> list[Row]:
        """The rows of one tenant whose ``key`` column is in ``values``, without the ``skip``
        columns; ``lock``: row locks where the database has them, taken in key order (the
        callers' sorted order: overlapping writers cannot deadlock)."""
        column = table.c[key]
        query = sa.select(*(c for c in table.columns if c.name not in skip)).where(
            table.c.tenant_id == tenant_id, self.in_values(column, sorted(set(values)))
        )
        if lock:
            query = self.locking(query, column)
        result = await conn.execute(query)
        return [dict(row) for row in result.mappings()]
