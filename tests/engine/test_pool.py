"""The PostgreSQL pool hands out live connections without a ping per checkout: a connection
the server closed is replaced before anyone uses it (PostgreSQL only; a missing server
fails, never skips)."""

from __future__ import annotations

import asyncio

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import make_engine, single_read
from app.settings import Settings

BACKEND_PID = sa.text("SELECT pg_backend_pid()")


async def _pids(engine: AsyncEngine, count: int) -> set[int]:
    """The backends of ``count`` pooled connections checked out at once."""
    async with asyncio.TaskGroup() as group:
        barrier = asyncio.Barrier(count)

        async def one() -> int:
            async with single_read(engine) as conn:
                pid = int((await conn.execute(BACKEND_PID)).scalar_one())
                await barrier.wait()  # hold it until all are out: distinct connections
                return pid

        tasks = [group.create_task(one()) for _ in range(count)]
    return {task.result() for task in tasks}


async def test_connections_the_server_closed_are_replaced_without_an_error(
    database_urls: dict[str, str],
) -> None:
    engine = make_engine(Settings(database_url=database_urls["postgres"], pool_size=3))
    dsn = database_urls["postgres"].replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn, timeout=10)
    try:
        old = await _pids(engine, 3)
        assert (
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(p)) FROM unnest($1::int[]) p", list(old)
            )
            == 3
        )
        while await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(old)
        ):
            await asyncio.sleep(0.05)
        # The client learns of the close when its event loop reads the server's FIN: give it
        # a moment (a checkout in the very same instant can fail once, and SQLAlchemy then
        # invalidates the pool, as it would with a ping that failed).
        await asyncio.sleep(0.5)
        new = await _pids(engine, 3)  # every request succeeds, on fresh connections
        assert not new & old
        assert len(new) == 3
    finally:
        await admin.close()
        await engine.dispose()
