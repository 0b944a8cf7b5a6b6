"""SQLite through aiosqlite with one thread round trip per statement (the accelerator
``onetrip``; without it the SQLite backend uses SQLAlchemy's own aiosqlite adapter).

aiosqlite runs each connection in a thread of its own, and every call it offers is one
round trip to that thread: a queue put, a wake-up, a callback into the event loop.
SQLAlchemy's adapter makes four of them per statement (create a cursor, execute, fetch,
close), one more for a ``BEGIN`` and one for the pool's rollback of a returned connection.
A round trip costs 20 to 50 µs on an idle desktop but 170 to 430 µs on a shared 2-core
virtual machine (measured on the bench machine: a thread ping-pong alone took 167 µs); a
1,000-row ``sync`` made about thirty of them, 7 to 10 ms.

* ``OneTripCursor`` runs the whole statement (cursor, execute or executemany, fetch, close)
  as one function in the connection's thread, and answers ``description``, ``rowcount``,
  ``lastrowid`` and the rows from what that function returned. Server-side (streaming)
  cursors keep SQLAlchemy's.
* ``OneTripConnection.begin_with_next``: a transaction's ``BEGIN`` travels with its first
  statement; ``commit``/``rollback`` with no transaction open make no round trip.

The SQLite backend (``app.db.sqlite``) plugs it in with ``create_async_engine(...,
module=dbapi())``, SQLAlchemy's documented way to hand a dialect its DBAPI module, so the
dialect, the pool and everything else stay SQLAlchemy's own. It uses aiosqlite's
``Connection._execute(fn)``, the method aiosqlite's own calls are built on (SQLAlchemy's
adapter reaches into the same connection's queue); ``pyproject.toml`` keeps aiosqlite
below the next minor version for that reason.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

Outcome = tuple[Any, int, int | None, list[Any] | None]
"""description, rowcount, lastrowid, rows (None: the statement returns none)."""


def _run(
    pending: set[object],
    token: object,
    connection: aiosqlite.Connection,
    begin: str | None,
    operation: str,
    parameters: Any,
    many: bool,
) -> Outcome:
    """One statement, whole, in the connection's thread (``begin``: a BEGIN to run first);
    ``token`` leaves ``pending`` when it is done, whether or not anyone still waits."""
    try:
        return _statement(connection._conn, begin, operation, parameters, many)
    finally:
        pending.discard(token)


def _statement(
    conn: Any, begin: str | None, operation: str, parameters: Any, many: bool
) -> Outcome:
    cursor = conn.cursor()  # (in the connection's thread only)
    try:
        if begin is not None:
            cursor.execute(begin)
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statements take one round trip to the connection's thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # no aiosqlite cursor: that alone would be a round trip
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        """Nothing to close: the statement's cursor was closed in the thread."""

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._trip(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._trip(operation, seq_of_parameters, many=True)

    async def _trip(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection = self._connection
        adapted: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        async with adapted._execute_mutex:
            begin = adapted._begin
            token = object()
            adapted._pending.add(token)
            try:
                outcome: Outcome = await connection._execute(
                    _run, adapted._pending, token, connection, begin, operation, parameters, many
                )
            finally:
                if begin is not None and token not in adapted._pending:
                    inside = adapted._connection._connection
                    if inside is not None and inside.in_transaction:
                        adapted._begin = None  # begun (a BEGIN that failed is tried again)
        self._description, self._rowcount, self._lastrowid, rows = outcome
        if rows is not None:
            self._rows = collections.deque(rows)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_begin", "_pending")
    _cursor_cls = OneTripCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._begin: str | None = None
        self._pending: set[object] = set()
        """Statements sent to the thread and not finished there (one whose task was
        cancelled goes on running: it may yet open a transaction)."""

    def begin_with_next(self, sql: str) -> None:
        """Run ``sql`` (a BEGIN) in the same round trip as the next statement, just before
        it: nothing can come between them, so the transaction starts as if it had been sent
        on its own (a ``BEGIN IMMEDIATE`` takes the write lock before the statement runs).
        A BEGIN that fails fails that statement, and is tried again with the next one."""
        self._begin = sql

    def idle_outside_transaction(self) -> bool:
        """No transaction open and no statement on its way that could open one."""
        connection = self._connection._connection
        return connection is not None and not self._pending and not connection.in_transaction

    def commit(self) -> None:
        """No round trip when no transaction is open (a transaction without statements:
        its BEGIN was never sent); ``sqlite3``'s own ``commit`` does nothing then. With a
        statement still running in the thread, the commit queues behind it."""
        self._begin = None
        if not self.idle_outside_transaction():
            super().commit()

    def rollback(self) -> None:
        """As ``commit``; this also spares the pool's reset of a connection whose
        transaction has ended its round trip."""
        self._begin = None
        if not self.idle_outside_transaction():
            super().rollback()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim, handing out ``OneTripConnection``s."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        creator_fn = kw.pop("async_creator_fn", None)
        if creator_fn:
            connection = creator_fn(*arg, **kw)
        else:
            connection = self.aiosqlite.connect(*arg, **kw)
            connection._thread.daemon = True  # as SQLAlchemy's shim does
        return OneTripConnection(self, await_(connection))


def dbapi() -> OneTripDBAPI:
    """The ``module=`` for ``create_async_engine`` on ``sqlite+aiosqlite`` URLs."""
    return OneTripDBAPI(aiosqlite, sqlite3)
