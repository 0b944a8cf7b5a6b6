"""Stamping, last before commit: on PostgreSQL the statement that locks the tenant's counter
row also renumbers the transaction's rows and announces the commit, so every other writer
of the tenant waits for one round trip and the commit; every listener hears the final seq,
and a rolled back transaction tells nobody."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from app.db import (
    KEY_LOCKS_MAX,
    Notice,
    bump,
    listen,
    make_engine,
    read_transaction,
    write_transaction,
)
from app.db.listener import NOTIFY_CHANNEL, PgListener
from app.engine.live.notify import Broker
from app.engine.tenants import create_tenant
from app.engine.write.seq import TENANTS
from app.engine.write.sync import Batch
from app.settings import Settings
from app.state import AppState
from tests.conftest import statements

Heard = list[tuple[str, str, int]]
WAIT_SECONDS = 10.0


@pytest.fixture
async def tenant_id(state: AppState) -> str:
    async with write_transaction(state.engine) as conn:
        return await create_tenant(conn, f"stamp-{uuid.uuid4().hex[:6]}")


@contextmanager
def transcript(state: AppState) -> Iterator[list[str]]:
    """Every statement the app sends inside the block, and ``COMMIT`` where a transaction
    commits (asyncpg's COMMIT does not pass through a cursor)."""
    with statements(state) as seen:

        def committed(_conn: Any) -> None:
            seen.append("COMMIT")

        event.listen(state.engine.sync_engine, "commit", committed)
        try:
            yield seen
        finally:
            event.remove(state.engine.sync_engine, "commit", committed)


def is_write_to(statement: str, table: str) -> bool:
    words = statement.split()
    return words[:2] in (["INSERT", "INTO"], ["UPDATE", table]) and table in words[:3]


async def sync(state: AppState, tenant_id: str, **batches: list[dict[str, Any]]) -> int:
    result = await state.service.sync(
        tenant_id, {plural: Batch(data=items) for plural, items in batches.items()}
    )
    assert result.total("failed") == 0
    return result.checkpoint


async def seqs_of(state: AppState, tenant_id: str, table: str) -> list[tuple[int, int]]:
    spec = state.registry.by_plural(table).table
    async with read_transaction(state.engine) as conn:
        rows = await conn.execute(
            sa.select(spec.c.seq, spec.c.created_seq)
            .where(spec.c.tenant_id == tenant_id)
            .order_by(spec.c.seq)
        )
        return [(int(seq), int(created)) for seq, created in rows.all()]


@asynccontextmanager
async def other_process(settings: Settings) -> AsyncIterator[Heard]:
    """What another server process on the same database hears (its own engine's LISTEN on
    PostgreSQL; on SQLite no other process serves the database: nothing)."""
    heard: Heard = []
    broker = Broker()
    broker.subscribe(None, lambda *event: heard.append(event))
    engine = make_engine(settings)
    listener = listen(engine, broker, lambda: None)
    try:
        if listener is not None:
            assert isinstance(listener, PgListener)
            await asyncio.wait_for(listener.connected.wait(), WAIT_SECONDS)
        yield heard
    finally:
        if listener is not None:
            await listener.stop()
        await engine.dispose()


async def until(heard: list[Any], count: int) -> None:
    async def arrived() -> None:
        while len(heard) < count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(arrived(), WAIT_SECONDS)


async def test_the_counter_row_is_locked_last_for_one_statement(
    state: AppState, tenant_id: str
) -> None:
    """A one-record sync names ``tenants`` in one statement. On PostgreSQL it comes after
    the row's write, last before COMMIT, and carries the renumbering and the NOTIFY; on
    SQLite (one writer at a time) the row's deferred write follows it with its final seq."""
    with transcript(state) as seen:
        checkpoint = await sync(state, tenant_id, users=[{"alias": "one", "name": "n"}])
    counter = [s for s in seen if "tenants" in s]
    assert len(counter) == 1, seen
    (stamp,) = counter
    at = seen.index(stamp)
    if state.engine.dialect.name == "postgresql":
        assert any(is_write_to(s, "users") for s in seen[:at]), seen
        assert seen[at + 1 :] == ["COMMIT"], seen
        assert stamp.startswith("WITH bump AS")
        assert "UPDATE tenants" in stamp
        assert "UPDATE users" in stamp
        assert "pg_notify" in stamp
        # (PostgreSQL would fold a second identical NOTIFY into one: listeners cannot tell)
        assert [s for s in seen if "pg_notify" in s] == [stamp]
    else:
        assert stamp.startswith("UPDATE tenants")
        assert len(seen[at + 1 :]) == 2, seen
        assert is_write_to(seen[at + 1], "users")
        assert seen[-1] == "COMMIT"
    assert await seqs_of(state, tenant_id, "users") == [(checkpoint, checkpoint)]


@pytest.mark.parametrize("persons", [3, KEY_LOCKS_MAX + 6], ids=["renumbered", "deferred"])
async def test_a_write_to_two_tables_is_numbered_and_announced_once(
    state: AppState, tenant_id: str, persons: int
) -> None:
    """Two entities in one transaction: both tables' rows get consecutive final seqs, and
    this process's hubs and another process's LISTEN each hear the final seq once. (Over
    ``KEY_LOCKS_MAX`` keys the last batch is written after the counter is taken, and the
    notification is a statement of its own.)"""
    local: Heard = []
    state.broker.subscribe(tenant_id, lambda *event: local.append(event))
    async with other_process(state.settings) as remote:
        users = [{"alias": f"u{n}", "name": "n"} for n in range(2)]
        people = [{"alias": f"p{n}", "name": "n"} for n in range(persons)]
        top = await sync(state, tenant_id, users=users, persons=people)
        fence = await sync(state, tenant_id, users=[{"alias": "fence", "name": "n"}])
        heard = [(tenant_id, "changes", top), (tenant_id, "changes", fence)]
        if state.engine.dialect.name == "postgresql":
            await until(remote, 2)  # one session's notifications arrive in commit order
            assert remote == heard
        else:
            assert remote == []  # no other process serves a SQLite database
    assert local == heard
    assert fence == top + 1
    stamped = await seqs_of(state, tenant_id, "users") + await seqs_of(state, tenant_id, "persons")
    assert sorted(seq for seq, _ in stamped) == list(range(top - 1 - persons, top + 2))
    assert all(created == seq for seq, created in stamped)


async def test_a_rolled_back_bump_notifies_nobody(database_urls: dict[str, str]) -> None:
    """The NOTIFY inside the counter's statement is delivered at COMMIT only, with the
    payload the listener parses, byte for byte."""
    settings = Settings(database_url=database_urls["postgres"], dev=False, pool_size=2)
    engine = make_engine(settings)
    dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    async with write_transaction(engine) as conn:
        tenant_id = await create_tenant(conn, f"stamp-{uuid.uuid4().hex[:6]}")
    listener = await asyncpg.connect(dsn, timeout=WAIT_SECONDS)
    payloads: list[str] = []

    def heard(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        if tenant_id in payload:  # not another test's
            payloads.append(payload)

    await listener.add_listener(NOTIFY_CHANNEL, heard)
    try:
        counter = (
            sa.update(TENANTS)
            .where(TENANTS.c.id == tenant_id)
            .values(seq=TENANTS.c.seq + 1)
            .returning(TENANTS.c.seq)
        )
        async with engine.connect() as conn:
            key = ("test", tenant_id)  # the counter names the tenant: a statement of its own
            await bump(conn, counter, key=key, params={}, notice=Notice(tenant_id, "changes"))
            await conn.rollback()
        async with write_transaction(engine) as conn:
            notice = Notice(tenant_id, "actions")
            seq = await bump(conn, counter, key=key, params={}, notice=notice)
        await until(payloads, 1)
        assert payloads == [f'{{"t":"{tenant_id}","k":"actions","s":{seq}}}']
        assert seq == 1
    finally:
        await listener.close()
        await engine.dispose()
