"""SQLite's one-trip cursor (``app.accel.onetrip``): each statement is one round trip to the
connection's thread, and everything SQLAlchemy reads from a cursor is still right. The tests
turn the accelerator on themselves, whatever ``SYNCGRAPH_ACCEL`` says; the last ones check
the plain path (SQLAlchemy's own aiosqlite adapter) keeps the same transactions.

SQLite only: PostgreSQL's driver (asyncpg) has no thread to go to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util.concurrency import greenlet_spawn

from app import accel
from app.accel.onetrip import OneTripConnection
from app.db import make_engine, single_read, write_transaction
from app.settings import Settings

THINGS = sa.Table(
    "things",
    sa.MetaData(),
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, unique=True),
)


@pytest.fixture(autouse=True)
def onetrip() -> Iterator[None]:
    """The accelerator on for the engines these tests make."""
    with accel.only(*accel.active(), "onetrip"):
        yield


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db", dev=False))
    async with engine.begin() as conn:
        await conn.run_sync(THINGS.metadata.create_all)
    yield engine
    await engine.dispose()


@contextmanager
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The functions sent to a connection's thread, in order (their names)."""
    sent: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(aiosqlite.Connection, "_execute", counting)
        yield sent


async def test_the_engine_hands_out_one_trip_connections(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.dbapi_connection, OneTripConnection)


async def test_a_statement_is_one_round_trip_and_its_results_are_complete(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))  # the connection's own BEGIN is done
        with trips(monkeypatch) as sent:
            inserted = await conn.execute(THINGS.insert().values(name="a"))
            assert inserted.inserted_primary_key == (1,)  # lastrowid
            await conn.execute(THINGS.insert(), [{"name": "b"}, {"name": "c"}])  # executemany
            updated = await conn.execute(
                THINGS.update().where(THINGS.c.name != "a").values(name=THINGS.c.name + "!")
            )
            assert updated.rowcount == 2
            result = await conn.execute(sa.select(THINGS).order_by(THINGS.c.n))
            assert list(result.keys()) == ["n", "name"]  # description
            assert result.fetchone() == (1, "a")
            assert result.fetchmany(5) == [(2, "b!"), (3, "c!")]
            assert result.fetchall() == []
        assert sent == ["_run"] * 4
        await conn.commit()


async def test_an_error_comes_back_as_sqlalchemy_raises_it_and_the_connection_goes_on(
    engine: AsyncEngine,
) -> None:
    async with write_transaction(engine) as conn:
        await conn.execute(THINGS.insert().values(name="a"))
    with pytest.raises(IntegrityError, match=r"UNIQUE constraint failed: things\.name"):
        async with write_transaction(engine) as conn:
            await conn.execute(THINGS.insert(), [{"name": "b"}, {"name": "a"}])
    async with write_transaction(engine) as conn:  # nothing of the failed batch was kept
        names = (await conn.execute(sa.select(THINGS.c.name).order_by("name"))).scalars()
        assert list(names) == ["a"]
        await conn.execute(THINGS.insert().values(name="b"))
        with pytest.raises(sa.exc.OperationalError, match="no such table"):
            await conn.execute(sa.text("SELECT * FROM nothing_here"))


async def test_a_connection_back_to_the_pool_is_rolled_back_only_if_a_transaction_is_open(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trips(monkeypatch) as sent:
        async with write_transaction(engine) as conn:
            await conn.execute(THINGS.insert().values(name="kept"))
    assert sent == ["_run", "commit"]  # BEGIN IMMEDIATE with the insert, COMMIT: no reset
    with trips(monkeypatch) as sent:
        async with engine.connect() as conn:
            await conn.execute(THINGS.insert().values(name="dropped"))
            # closed with the transaction still open: the pool's reset rolls it back
    assert sent == ["_run", "rollback"]
    with trips(monkeypatch) as sent:
        async with write_transaction(engine):
            pass  # no statement: its BEGIN was never sent, nothing to commit
    assert sent == []
    async with engine.connect() as conn:
        names = (await conn.execute(sa.select(THINGS.c.name))).scalars()
        assert list(names) == ["kept"]


async def test_a_single_read_sends_its_query_alone(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with write_transaction(engine) as conn:
        await conn.execute(THINGS.insert().values(name="a"))
    with trips(monkeypatch) as sent:
        async with single_read(engine) as conn:
            names = (await conn.execute(sa.select(THINGS.c.name))).scalars()
            assert list(names) == ["a"]
    assert sent == ["_run"]  # no BEGIN, and nothing to roll back


async def test_streamed_results_still_come_in_parts(engine: AsyncEngine) -> None:
    async with write_transaction(engine) as conn:
        await conn.execute(THINGS.insert(), [{"name": f"x{i}"} for i in range(25)])
    async with engine.connect() as conn:
        result = await conn.stream(sa.select(THINGS.c.n).order_by(THINGS.c.n))
        parts = [part async for part in result.partitions(10)]
    assert [len(p) for p in parts] == [10, 10, 5]
    assert [row.n for part in parts for row in part] == list(range(1, 26))


async def test_a_begin_that_cannot_get_the_lock_fails_the_statement_and_is_tried_again(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/locked.db"
    holder = make_engine(Settings(database_url=url, dev=False))
    waiter = make_engine(Settings(database_url=url, dev=False, sqlite_busy_timeout_ms=50))
    async with holder.begin() as conn:
        await conn.run_sync(THINGS.metadata.create_all)
    try:
        async with holder.connect() as held:
            await held.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            await held.execute(THINGS.insert().values(name="held"))  # the write lock
            async with waiter.connect() as conn:
                await conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
                await conn.begin()
                for _ in range(2):  # not run outside a transaction after the first failure
                    with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                        await conn.execute(THINGS.insert().values(name="waiting"))
                await held.commit()
                await conn.execute(THINGS.insert().values(name="waiting"))  # BEGIN, then it
                await conn.rollback()
        async with waiter.connect() as conn:
            names = (await conn.execute(sa.select(THINGS.c.name))).scalars()
            assert list(names) == ["held"]
    finally:
        await holder.dispose()
        await waiter.dispose()


SLOW = sa.text(  # about a second of work for SQLite, in the connection's thread
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) "
    "SELECT count(*) FROM n"
)


async def test_a_cancelled_first_statement_leaves_no_transaction_open(
    engine: AsyncEngine,
) -> None:
    """The statement goes on in the thread after its task is cancelled: the transaction its
    BEGIN opens must still be rolled back, not left holding the write lock in the pool."""

    async def write() -> None:
        async with write_transaction(engine) as conn:
            await conn.execute(SLOW)
            await conn.execute(THINGS.insert().values(name="never"))

    task = asyncio.create_task(write())
    await asyncio.sleep(0.05)  # BEGIN IMMEDIATE and the slow query are in the thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):  # the next writers get the lock and a clean transaction
        for name in ("a", "b"):
            async with write_transaction(engine) as conn:
                await conn.execute(THINGS.insert().values(name=name))
    async with engine.connect() as conn:
        names = (await conn.execute(sa.select(THINGS.c.name).order_by("name"))).scalars()
        assert list(names) == ["a", "b"]


async def test_a_rollback_waits_for_a_statement_still_on_its_way_to_the_thread(
    engine: AsyncEngine,
) -> None:
    """A statement whose caller was cancelled still runs later, BEGIN first: the rollback
    must run after it, not be skipped because no transaction is open yet."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).dbapi_connection
        assert isinstance(driver, OneTripConnection)
        thread_busy = asyncio.ensure_future(driver._connection._execute(time.sleep, 0.3))
        driver.begin_with_next("BEGIN IMMEDIATE")
        statement = asyncio.create_task(
            greenlet_spawn(lambda: driver.cursor().execute("SELECT count(*) FROM things"))
        )
        await asyncio.sleep(0.05)  # queued behind the sleep, not started
        statement.cancel()
        with pytest.raises(asyncio.CancelledError):
            await statement
        await greenlet_spawn(driver.rollback)  # after the statement and its BEGIN
        await thread_busy
        assert not driver._connection._connection.in_transaction
        await conn.invalidate()  # SQLAlchemy's side of it is not part of this test
    async with asyncio.timeout(10), write_transaction(engine) as conn:  # the lock is free
        await conn.execute(THINGS.insert().values(name="after"))


@contextmanager
def plain_path() -> Iterator[None]:
    with accel.only(*(name for name in accel.active() if name != "onetrip")):
        yield


async def test_without_the_accelerator_writers_still_begin_immediate_and_reads_alone(
    tmp_path: Path,
) -> None:
    """SQLAlchemy's own adapter: the ``begin`` event sends the BEGIN itself, so a writer
    still takes the write lock up front and a single read still runs without a BEGIN."""
    with plain_path():
        engine = make_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db"))
    sent: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(THINGS.metadata.create_all)
        async with engine.connect() as conn:
            assert not isinstance(
                (await conn.get_raw_connection()).dbapi_connection, OneTripConnection
            )
        sent.clear()
        async with write_transaction(engine) as conn:
            await conn.execute(THINGS.insert().values(name="a"))
        async with single_read(engine) as conn:
            assert list((await conn.execute(sa.select(THINGS.c.name))).scalars()) == ["a"]
        assert [s.split()[0] for s in sent] == ["BEGIN", "INSERT", "SELECT"]
        assert sent[0] == "BEGIN IMMEDIATE"
    finally:
        await engine.dispose()
