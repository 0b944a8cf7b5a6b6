"""The reference points: the raw driver's batched upsert of the same rows into the same table.

Each writer owns one driver connection (no SQLAlchemy) and writes one batch per transaction,
with the same ``INSERT … ON CONFLICT (tenant_id, id) DO UPDATE SET every other column =
excluded`` the server emits. ``params`` turns rows into driver parameters outside the timed
part, so the figure is the database-plus-driver floor.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any, Protocol

import aiosqlite
import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from bench.common import Database

KEYS = ("tenant_id", "id")
Row = dict[str, Any]


class RawWriter(Protocol):
    label: str

    def params(self, rows: list[Row]) -> Any: ...

    async def write_batch(self, params: Any) -> None: ...

    async def close(self) -> None: ...


def _conflict_clause(table: sa.Table) -> str:
    sets = ", ".join(f"{c.name} = excluded.{c.name}" for c in table.columns if c.name not in KEYS)
    return f"ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET {sets}"


def _column_list(table: sa.Table) -> str:
    return ", ".join(c.name for c in table.columns)


def values_upsert(table: sa.Table, placeholders: list[str]) -> str:
    """INSERT … VALUES (one row of placeholders) ON CONFLICT … (for executemany)."""
    return (
        f"INSERT INTO {table.name} ({_column_list(table)}) VALUES ({', '.join(placeholders)}) "
        + _conflict_clause(table)
    )


def unnest_upsert(table: sa.Table) -> str:
    """INSERT … SELECT FROM unnest($1::type[], …) ON CONFLICT …: one statement per batch."""
    pg = postgresql.dialect()
    arrays = ", ".join(
        f"${i}::{c.type.compile(dialect=pg)}[]" for i, c in enumerate(table.columns, 1)
    )
    return (
        f"INSERT INTO {table.name} ({_column_list(table)}) SELECT * FROM unnest({arrays}) "
        + _conflict_clause(table)
    )


def _sqlite_value(value: Any) -> Any:
    """Values stored as SQLAlchemy stores them on SQLite."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _pg_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


class SqliteExecutemany:
    label = "aiosqlite executemany"

    def __init__(self, conn: aiosqlite.Connection, table: sa.Table) -> None:
        self.conn = conn
        self.columns = [c.name for c in table.columns]
        self.sql = values_upsert(table, ["?"] * len(self.columns))

    @classmethod
    async def open(cls, db: Database, table: sa.Table) -> SqliteExecutemany:
        """Same pragmas as the server's connections (WAL, synchronous=NORMAL)."""
        conn = await aiosqlite.connect(db.driver_target, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            await conn.execute(f"PRAGMA {pragma}")
        await conn.execute("PRAGMA foreign_keys=ON")
        return cls(conn, table)

    def params(self, rows: list[Row]) -> list[tuple[Any, ...]]:
        return [tuple(_sqlite_value(r[c]) for c in self.columns) for r in rows]

    async def write_batch(self, params: list[tuple[Any, ...]]) -> None:
        await self.conn.execute("BEGIN IMMEDIATE")
        await self.conn.executemany(self.sql, params)
        await self.conn.execute("COMMIT")

    async def close(self) -> None:
        await self.conn.close()


class PgExecutemany:
    label = "asyncpg executemany"

    def __init__(self, conn: asyncpg.Connection, table: sa.Table) -> None:
        self.conn = conn
        self.columns = [c.name for c in table.columns]
        self.sql = values_upsert(table, [f"${i}" for i in range(1, len(self.columns) + 1)])

    @classmethod
    async def open(cls, db: Database, table: sa.Table) -> PgExecutemany:
        return cls(await asyncpg.connect(db.driver_target), table)

    def params(self, rows: list[Row]) -> list[tuple[Any, ...]]:
        return [tuple(_pg_value(r[c]) for c in self.columns) for r in rows]

    async def write_batch(self, params: list[tuple[Any, ...]]) -> None:
        async with self.conn.transaction():
            await self.conn.executemany(self.sql, params)

    async def close(self) -> None:
        await self.conn.close()


class PgUnnest(PgExecutemany):
    label = "asyncpg unnest"

    def __init__(self, conn: asyncpg.Connection, table: sa.Table) -> None:
        super().__init__(conn, table)
        self.sql = unnest_upsert(table)

    def params(self, rows: list[Row]) -> list[list[Any]]:
        return [[_pg_value(r[c]) for r in rows] for c in self.columns]

    async def write_batch(self, params: list[tuple[Any, ...]]) -> None:
        async with self.conn.transaction():
            await self.conn.execute(self.sql, *params)


async def open_writers(db: Database, table: sa.Table) -> list[RawWriter]:
    """The raw reference writers for a backend (PostgreSQL gets two variants)."""
    if db.backend == "sqlite":
        return [await SqliteExecutemany.open(db, table)]
    return [await PgExecutemany.open(db, table), await PgUnnest.open(db, table)]
