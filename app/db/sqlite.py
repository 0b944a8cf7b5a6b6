"""SQLite (aiosqlite): WAL, explicit BEGINs, one writer at a time queued in this process.

SQLite has one writer at a time and one process (no other server shares the file), so it
needs no key locks, no row locks and no notifications: what ``postgres.py`` does for
concurrency is, here, the writer queue.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from app import accel
from app.db.backend import (
    Backend,
    Listener,
    Notice,
    Publisher,
    RowForm,
    RowStore,
    Then,
)
from app.db.rows import PlainRows
from app.db.types import JSON_OPTIONS
from app.settings import Settings


class SqliteBackend(Backend):
    row_form = RowForm(arrays=False, native_floats=False)
    several_processes = False
    alters_by_copy = True
    reads_in_background = False  # aiosqlite's thread would wait for the GIL on every row

    def __init__(self) -> None:
        self._writer = asyncio.Lock()
        self.rows = self._row_store()
        self._files: tuple[str, ...] = ()
        """The database file and its WAL, whose stat says whether anyone wrote."""
        self._seen: object = None
        """Their stat when this process last accounted for every write (its own commits)."""
        self._foreign = False
        """A writer of this process found that another had written before it."""

    @classmethod
    def migration_engine(cls, database_url: str) -> AsyncEngine:
        """BEGINs sent by us here too, so that a migration's DDL belongs to its transaction:
        a migration that fails or is refused (a table without one) leaves nothing behind,
        where pysqlite's legacy mode would have committed each ``CREATE TABLE`` at once."""
        engine = create_async_engine(database_url, poolclass=NullPool)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _row_store(self) -> RowStore:
        if accel.enabled("rowcodec"):  # imported only then: the plain path never loads it
            from app.accel.rowcodec import RowCodec

            return RowCodec(self.row_form, probe=None)
        return PlainRows(self.insert, self.in_values, locking=self.locking)

    def create_engine(self, settings: Settings) -> AsyncEngine:
        """WAL, a busy timeout, foreign keys, and BEGINs sent by us (see ``_on_begin``)."""
        options: dict[str, Any] = {}
        if accel.enabled("onetrip"):
            from app.accel import onetrip

            options["module"] = onetrip.dbapi()  # one thread round trip per statement
        engine = create_async_engine(
            settings.database_url, pool_size=settings.pool_size, **JSON_OPTIONS, **options
        )
        _set_up_connections(engine, settings)
        path = sa.make_url(settings.database_url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            self._files = (path, f"{path}-wal")
            self._seen = self._stamp()

            @event.listens_for(engine.sync_engine, "connect")
            def _opened(_dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
                # opening a connection creates the WAL: not another process's write
                self._seen = self._stamp()

        return engine

    def _stamp(self) -> object:
        """(size, mtime, inode) of the file and its WAL: a commit by any process changes
        them (the WAL grows, or restarts after a checkpoint with a new mtime)."""
        stamp: list[tuple[int, int, int] | None] = []
        for name in self._files:
            try:
                st = os.stat(name)
            except OSError:
                stamp.append(None)
                continue
            stamp.append((st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(stamp)

    def others_wrote(self) -> bool:
        """Whether the files changed since this process last accounted for them (after each
        of its own commits): another process (``syncgraph import``, ``key set-view``) may
        have written. A file this backend cannot name always says yes. Each writer of this
        process looks before its commit, holding the write lock, so a commit of another
        process is seen however many of ours follow it; one landing between our commit and
        our stat after it is missed, so callers bound how long they trust what they keep."""
        if not self._files:
            return True
        now = self._stamp()
        changed = self._foreign or now != self._seen
        self._seen, self._foreign = now, False
        return changed

    @asynccontextmanager
    async def write_transaction(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        """SQLite runs one writer at a time anyway; queueing this process's writers on a
        FIFO lock serves them in arrival order, where SQLite's busy-wait would let some
        starve past the busy timeout. ``BEGIN IMMEDIATE``: see ``_on_begin``."""
        async with self._writer, engine.connect() as conn:
            await conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            async with conn.begin():
                yield conn
                if self._files and self._stamp() != self._seen:  # someone wrote before us
                    self._foreign = True
            if self._files:  # our own commit is not news to us
                self._seen = self._stamp()

    def single_read_options(self) -> dict[str, Any]:
        return {"sqlite_begin": None}  # each statement is then a transaction of its own

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def array_overlaps_parameter(
        self, column: sa.Column[Any], name: str, *, tenant: sa.BindParameter[Any]
    ) -> Any:
        element = sa.func.json_each(column).table_valued("value")
        values: sa.BindParameter[Any] = sa.bindparam(name, expanding=True)
        return sa.exists(sa.select(1).select_from(element).where(element.c.value.in_(values)))

    def in_values(self, column: sa.ColumnElement[Any], values: list[Any]) -> Any:
        return column.in_(values)

    def in_parameter(self, column: sa.ColumnElement[Any], name: str) -> Any:
        return column.in_(sa.bindparam(name, expanding=True))

    def locking(self, query: sa.Select[Any], key: sa.ColumnElement[Any]) -> sa.Select[Any]:
        return query  # the write transaction holds the whole file: no row locks to take

    async def bump(
        self,
        conn: AsyncConnection,
        counter: sa.Update,
        then: Sequence[Then],
        *,
        key: Hashable,
        params: Mapping[str, Any],
        notice: Notice | None,
    ) -> int:
        # no UPDATE inside a WITH on SQLite: one statement after another (the writer holds
        # the file anyway), and no other process to tell (``notify_commit``)
        value = int((await conn.execute(counter, params)).scalar_one())

        def steps() -> list[sa.Update]:
            top = sa.bindparam("bump_top", type_=sa.BigInteger)
            return [then_(top) for then_ in then]

        for step in self.statement(("bump", key), steps):
            await conn.execute(step, {**params, "bump_top": value})
        return value

    def locks_table(self, keys: int) -> bool:
        return True  # one writer at a time: every writer holds its tables alone

    async def lock_keys(
        self, conn: AsyncConnection, scope: str, keys: list[str], *, exclusive: bool
    ) -> bool:
        return True  # as ``locks_table``: the write transaction is the lock

    async def notify_commit(
        self, conn: AsyncConnection, tenant_id: str, kind: str, seq: int
    ) -> None:
        """Nothing to tell: no other process serves this database (the in-process broker
        hears the commit from the engine)."""

    def listen(
        self, engine: AsyncEngine, broker: Publisher, on_reconnect: Callable[[], None]
    ) -> Listener | None:
        return None

    def analyze_soon(
        self, engine: AsyncEngine, table: sa.Table, rows: int
    ) -> asyncio.Task[None] | None:
        return None  # the lookups' plans do not depend on statistics here

    async def settle(self) -> None:
        """No background work."""


def _set_up_connections(engine: AsyncEngine, settings: Settings) -> None:
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
        begin_with_next = getattr(driver, "begin_with_next", None)
        if begin_with_next is not None:  # the one-trip DBAPI (app.accel.onetrip)
            begin_with_next(begin)  # sent with the first statement: one round trip less
        else:
            conn.exec_driver_sql(begin)
