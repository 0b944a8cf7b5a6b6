"""Engines, transactions and the few places where SQLite and PostgreSQL differ."""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from app import sqlite_driver
from app.settings import Settings

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""JSON column type: JSONB on PostgreSQL, TEXT-backed JSON on SQLite."""


def json_dumps(value: Any) -> str:
    """JSON columns are written with orjson (3 to 5 times faster than ``json.dumps`` on the
    small objects and lists stored here); values orjson refuses (integers over 64 bits)
    fall back to the standard library."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def json_loads(value: str | bytes) -> Any:
    """The reverse of ``json_dumps``, for what the standard library wrote (escaped lone
    surrogates, which orjson refuses)."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return json.loads(value)


def make_engine(settings: Settings) -> AsyncEngine:
    """One engine per process; SQLite gets WAL, a busy timeout and explicit BEGINs."""
    json_options: dict[str, Any] = {
        "json_serializer": json_dumps,
        "json_deserializer": json_loads,
    }
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            pool_size=settings.pool_size,
            module=sqlite_driver.dbapi(),  # one thread round trip per statement
            **json_options,
        )
        _configure_sqlite(engine, settings)
        return engine
    return create_async_engine(
        settings.database_url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
        **json_options,
    )


def _configure_sqlite(engine: AsyncEngine, settings: Settings) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let us emit BEGIN ourselves (pysqlite's legacy mode would not BEGIN for SELECTs).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that upgrades
        # later fails with SQLITE_BUSY instead of waiting for the busy timeout.
        # (``sqlite_begin=None``: no BEGIN, each statement commits on its own: ``single_read``)
        begin = conn.get_execution_options().get("sqlite_begin", "BEGIN")
        if begin is None:
            return
        driver = conn.connection.dbapi_connection
        if isinstance(driver, sqlite_driver.OneTripConnection):
            driver.begin_with_next(begin)  # sent with the first statement: one round trip less
        else:
            conn.exec_driver_sql(begin)


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside one write transaction, committed when the block exits cleanly.

    SQLite runs one writer at a time anyway; queueing this process's writers on a FIFO lock
    serves them in arrival order, where SQLite's busy-wait would let some starve past the
    busy timeout."""
    if engine.dialect.name != "sqlite":
        async with engine.connect() as conn, conn.begin():
            yield conn
        return
    async with _writer_lock(engine), engine.connect() as conn:
        await conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        async with conn.begin():
            yield conn


_WRITER_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _writer_lock(engine: AsyncEngine) -> asyncio.Lock:
    lock = _WRITER_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITER_LOCKS[engine.sync_engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def read_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside one read transaction (one snapshot on SQLite)."""
    async with engine.connect() as conn, conn.begin():
        yield conn


@asynccontextmanager
async def single_read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads that need no common snapshot (authentication's one query),
    outside a transaction, which saves the BEGIN and ROLLBACK round trips (on SQLite: each
    statement then is a transaction of its own)."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        else:
            await conn.execution_options(sqlite_begin=None)
        yield conn


def dialect_insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


NOTIFY_CHANNEL = "syncgraph"


async def notify_commit(conn: AsyncConnection, tenant_id: str, kind: str, seq: int) -> None:
    """Tell other processes about this transaction's commit. On PostgreSQL the NOTIFY is
    delivered only at COMMIT (never for a rollback); SQLite has only one process's broker.
    The payload only wakes hubs (far under NOTIFY's 8000-byte limit)."""
    if conn.dialect.name != "postgresql":
        return
    payload = f'{{"t":"{tenant_id}","k":"{kind}","s":{int(seq)}}}'
    await conn.execute(
        sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, sa.bindparam("payload", payload)))
    )


KEY_LOCKS_MAX = 64
"""Above this many keys a writer locks the whole (tenant, table) instead: PostgreSQL keeps
advisory locks in a fixed shared table (about 12,000 on a default server), which a few
concurrent 1,000-item batches locking every key would exhaust ("out of shared memory")."""


def locks_table(conn: AsyncConnection, keys: int) -> bool:
    """Whether a writer of ``keys`` keys holds its (tenant, table) alone: always on SQLite
    (one writer at a time), and on PostgreSQL above ``KEY_LOCKS_MAX`` keys."""
    return conn.dialect.name != "postgresql" or keys > KEY_LOCKS_MAX


async def lock_keys(
    conn: AsyncConnection, scope: str, keys: list[str], *, exclusive: bool = False
) -> bool:
    """Transaction-scoped locks for writing rows of one (tenant, table) ``scope``
    (PostgreSQL advisory locks). A writer of a few keys holds the scope shared and each
    ``scope:key`` exclusively, taken in hash order so concurrent writers never wait on each
    other in a cycle; a writer of many keys, or of the whole table (``exclusive``: cleanSync,
    resync, purge), holds the scope exclusively. Every engine write to an entity row happens
    under one of these. SQLite needs none: its write transactions run one at a time.

    Returns whether this transaction now has the scope to itself."""
    if conn.dialect.name != "postgresql":
        return True
    if exclusive or len(keys) > KEY_LOCKS_MAX:
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(CAST(:k AS bigint))"), {"k": _lock_id(scope)}
        )
        return True
    hashes = sorted({_lock_id(f"{scope}:{key}") for key in keys})
    await conn.execute(
        sa.text("SELECT pg_advisory_xact_lock_shared(CAST(:k AS bigint))"), {"k": _lock_id(scope)}
    )
    if hashes:
        # unnest yields the array in order, and the locks are taken row by row in that order.
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
            {"keys": hashes},
        )
    return False


def _lock_id(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )
