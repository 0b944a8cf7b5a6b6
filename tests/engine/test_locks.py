"""Write locks on PostgreSQL: what a sync transaction holds (SQLite runs one writer at a
time and takes none)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import KEY_LOCKS_MAX, lock_keys, write_transaction
from app.engine.tenants import create_tenant
from app.engine.write.sync import Batch, apply_sync
from app.settings import Settings
from app.state import AppState, make_state


@pytest.fixture
async def pg_state(database_urls: dict[str, str]) -> AsyncIterator[AppState]:
    state = make_state(Settings(database_url=database_urls["postgres"], dev=False, pool_size=2))
    yield state
    await state.close()


async def advisory_locks(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(
        sa.text(
            "SELECT mode, count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND pid = pg_backend_pid() GROUP BY mode"
        )
    )
    return {mode: int(count) for mode, count in rows.all()}


async def sync_and_count(state: AppState, users: int) -> dict[str, int]:
    async with write_transaction(state.engine) as conn:
        tenant_id = await create_tenant(conn, f"locks-{uuid.uuid4().hex[:6]}")
    data = [{"alias": f"u{i}", "name": "n"} for i in range(users)]
    persons = [{"alias": f"p{i}", "name": "n"} for i in range(users)]
    async with state.service.write(tenant_id) as tx:
        batches = {"users": Batch(data=data), "persons": Batch(data=persons)}
        result = await apply_sync(tx, state.registry, batches)
        assert result.total("failed") == 0
        held = await advisory_locks(tx.conn)
    return held


async def test_large_batches_lock_their_table_not_each_key(pg_state: AppState) -> None:
    """PostgreSQL keeps advisory locks in a fixed shared table (about 12,000 on a default
    server): a few concurrent 1,000-item batches locking each id and alias would fill it
    ("out of shared memory"). A batch over the limit holds one lock per table."""
    held = await sync_and_count(pg_state, 1000)
    assert held == {"ExclusiveLock": 2}


async def test_small_batches_lock_each_key(pg_state: AppState) -> None:
    """A few keys: the table shared (one per entity) and each id or alias exclusively, so
    writers of different records of one table run side by side."""
    users = KEY_LOCKS_MAX // 4
    held = await sync_and_count(pg_state, users)
    assert held == {"ShareLock": 2, "ExclusiveLock": 2 * users}


async def granted_to(conn: AsyncConnection, pid: int) -> dict[str, int]:
    rows = await conn.execute(
        sa.text(
            "SELECT mode, granted, count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND pid = :pid GROUP BY mode, granted"
        ),
        {"pid": pid},
    )
    return {f"{mode}{'' if granted else ' waiting'}": int(n) for mode, granted, n in rows.all()}


async def test_a_writer_waits_for_the_table_before_it_holds_any_key(pg_state: AppState) -> None:
    """The table's shared lock and the keys' locks go in one statement; the table's comes
    first. A writer queued behind a cleanSync (which holds the table alone) holds none of its
    keys meanwhile, so nobody waiting on those keys queues behind the cleanSync too."""
    scope = f"locks-{uuid.uuid4().hex[:6]}:users"
    async with write_transaction(pg_state.engine) as whole:
        assert await lock_keys(whole, scope, [], exclusive=True)
        async with pg_state.engine.connect() as writer:
            pid = (await writer.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            await writer.commit()
            waiting = asyncio.create_task(_lock_in_transaction(writer, scope, ["i:a", "i:b"]))
            try:
                held = await _first_locks(pg_state, pid)
            finally:
                await whole.commit()  # the cleanSync ends: the writer goes on
                after = await asyncio.wait_for(waiting, 10)
    assert held == {"ShareLock waiting": 1}
    assert after == {"ShareLock": 1, "ExclusiveLock": 2}


async def _first_locks(state: AppState, pid: int) -> dict[str, int]:
    """The advisory locks backend ``pid`` holds or waits for, once it has any."""
    async with state.engine.connect() as watcher:
        for _ in range(200):
            held = await granted_to(watcher, pid)
            if held:
                return held
            await asyncio.sleep(0.01)
    return {}


async def _lock_in_transaction(
    conn: AsyncConnection, scope: str, keys: list[str]
) -> dict[str, int]:
    async with conn.begin():
        assert not await lock_keys(conn, scope, keys)
        return await advisory_locks(conn)
