"""What PostgreSQL's planner knows about an entity table, and making sure it learns.

Reading a batch's rows is fastest as one probe of the key's own index per key
(``driver._build_reader``), but only while the table has statistics: without any, every index
that starts with ``tenant_id`` looks alike to the planner, and a probe may walk the tenant's
rows once per key (quadratic). ``read_form`` says which form is safe; ``analyze_soon`` runs
ANALYZE after a bulk write into a table that has none, instead of leaving the first import of
a fresh installation to autovacuum's next round (up to a minute: a whole import).
"""

from __future__ import annotations

import asyncio
import logging
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("syncgraph.stats")

RECHECK = 30.0
"""Seconds before a table without statistics is looked at again."""
ANALYZE_AFTER = 500
"""Rows written to a table without statistics by one request that make it worth an ANALYZE."""

_KNOWN: dict[tuple[str, str], float | bool] = {}
"""(database, table) -> True once the table has statistics, else when it was last looked at."""
_RUNNING: dict[tuple[str, str], asyncio.Task[None]] = {}
_REFUSED: set[tuple[str, str]] = set()
"""Tables whose ANALYZE failed: not tried again by this process (one warning each)."""


def _key(engine: AsyncEngine, table: sa.Table) -> tuple[str, str]:
    return (engine.url.render_as_string(hide_password=True), table.name)


async def read_form(conn: AsyncConnection, table: sa.Table) -> bool:
    """Whether lookups in ``table`` may probe per key: PostgreSQL has statistics on its
    ``tenant_id`` (ANALYZE of the table with rows in it, by autovacuum, by hand or by
    ``analyze_soon``). Remembered once true; looked at again every ``RECHECK`` seconds."""
    key = _key(conn.engine, table)
    known = _KNOWN.get(key)
    if known is True:
        return True
    now = time.monotonic()
    if isinstance(known, float) and now - known < RECHECK:
        return False
    result = await conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = current_schema() "
        "AND tablename = $1 AND attname = 'tenant_id')",
        (table.name,),
    )
    analyzed = bool(result.scalar())
    _KNOWN[key] = True if analyzed else now
    return analyzed


def analyze_soon(engine: AsyncEngine, table: sa.Table, rows: int) -> asyncio.Task[None] | None:
    """After a commit that wrote ``rows`` rows of ``table``: ANALYZE it in the background if
    PostgreSQL has no statistics on it (as far as this process knows) and the write was a
    bulk one. One at a time per table; a failure (no privilege, say) is logged once, and the
    lookups stay in their join form until autovacuum analyzes the table."""
    key = _key(engine, table)
    if engine.dialect.name != "postgresql" or rows < ANALYZE_AFTER or _KNOWN.get(key) is True:
        return None
    if key in _REFUSED:
        return None
    if key in _RUNNING:
        return _RUNNING[key]
    task = asyncio.create_task(_analyze(engine, table, key))
    _RUNNING[key] = task
    task.add_done_callback(lambda _: _RUNNING.pop(key, None))
    return task


async def settle(engine: AsyncEngine) -> None:
    """Wait for the background ANALYZEs of ``engine``'s database (before disposing of it)."""
    url = engine.url.render_as_string(hide_password=True)
    tasks = [task for (database, _), task in _RUNNING.items() if database == url]
    await asyncio.gather(*tasks, return_exceptions=True)


async def _analyze(engine: AsyncEngine, table: sa.Table, key: tuple[str, str]) -> None:
    started = time.perf_counter()
    try:
        async with engine.connect() as conn:
            target = conn.dialect.identifier_preparer.format_table(table)
            await conn.exec_driver_sql(f"ANALYZE {target}")
            await conn.commit()
            _KNOWN.pop(key, None)  # looked at again by the next read
            analyzed = await read_form(conn, table)
    except Exception:  # a background nicety: the server goes on without it
        _REFUSED.add(key)
        log.warning(
            "ANALYZE %s failed (not tried again); lookups keep their join form until "
            "autovacuum analyzes it",
            table.name,
            exc_info=True,
        )
        return
    log.info(
        "analyzed %s after a bulk write (%.0f ms, statistics %s)",
        table.name,
        (time.perf_counter() - started) * 1000,
        "present" if analyzed else "still missing",
    )
