"""What PostgreSQL's planner knows about an entity table, and making sure it learns.

Reading a batch's rows is fastest as one probe of the key's own index per key
(``app.accel.rowcodec``'s probe form), but only while the table has statistics: without
any, every index that starts with ``tenant_id`` looks alike to the planner, and a probe may
walk the tenant's rows once per key (quadratic). ``read_form`` says which form is safe;
``analyze_soon`` runs ANALYZE after a bulk write into a table that has none, instead of
leaving the first import of a fresh installation to autovacuum's next round (up to a minute:
a whole import).
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


class Planner:
    """One database's statistics as far as this process knows them: one per engine (its
    backend's), so the memory lives and dies with the engine, keyed by table name."""

    def __init__(self) -> None:
        self.known: dict[str, float | bool] = {}
        """table -> True once it has statistics, else when it was last looked at."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self.refused: set[str] = set()
        """Tables whose ANALYZE failed: not tried again (one warning each)."""

    async def read_form(self, conn: AsyncConnection, table: sa.Table) -> bool:
        """Whether lookups in ``table`` may probe per key: PostgreSQL has statistics on its
        ``tenant_id`` (ANALYZE of the table with rows in it, by autovacuum, by hand or by
        ``analyze_soon``). Remembered once true; looked at again every ``RECHECK`` seconds."""
        known = self.known.get(table.name)
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
        self.known[table.name] = True if analyzed else now
        return analyzed

    def analyze_soon(
        self, engine: AsyncEngine, table: sa.Table, rows: int
    ) -> asyncio.Task[None] | None:
        """ANALYZE ``table`` in the background if it has no statistics (as far as this
        process knows) and ``rows`` is a bulk write. One at a time per table; a failure (no
        privilege, say) is logged once, and the lookups stay in their join form until
        autovacuum analyzes the table."""
        name = table.name
        if rows < ANALYZE_AFTER or self.known.get(name) is True or name in self.refused:
            return None
        if name in self.running:
            return self.running[name]
        task = asyncio.create_task(self._analyze(engine, table))
        self.running[name] = task
        task.add_done_callback(lambda _: self.running.pop(name, None))
        return task

    async def settle(self) -> None:
        """Wait for the background ANALYZEs (before disposing of the engine)."""
        await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def _analyze(self, engine: AsyncEngine, table: sa.Table) -> None:
        started = time.perf_counter()
        try:
            async with engine.connect() as conn:
                target = conn.dialect.identifier_preparer.format_table(table)
                await conn.exec_driver_sql(f"ANALYZE {target}")
                await conn.commit()
                self.known.pop(table.name, None)  # looked at again by the next read
                analyzed = await self.read_form(conn, table)
        except Exception:  # a background nicety: the server goes on without it
            self.refused.add(table.name)
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
