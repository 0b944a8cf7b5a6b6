"""Write locks on PostgreSQL: what a sync transaction holds (SQLite runs one writer at a
time and takes none)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import KEY_LOCKS_MAX, write_transaction
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
