"""The recent end of each tenant's action log, kept in memory for its live subscribers.

Every device of a tenant typically subscribes to ``actions``; without this, each commit of
an action woke every subscriber into a read of its own (N subscribers, N reads per commit).
A tail holds the tenant's actions with ``lo < seq <= hi``. A subscriber whose cursor is
inside it is answered from memory; when the log has moved past ``hi`` (a commit was
notified), one read extends the tail for every subscriber (the first to ask reads, the
others await that same read). The read is bounded by the counter read first, like
``read_actions``, so the tail never misses an action that commits later with a lower
position. A cursor below ``lo`` (a catch-up) is read from the database as before. A
view-bound subscriber is answered from the same tail, filtered to its binding's actions.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import read_transaction
from app.engine.devices.actions import ACTIONS, ActionPage, action_top, read_actions
from app.engine.live.notify import Broker
from app.engine.metrics import Metrics

CAPACITY = 1000
"""Actions a tail keeps; older ones are read from the database."""


class ActionTail:
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.rows: list[Any] = []
        self.seqs: list[int] = []
        self.lo: int | None = None
        """None until the first read."""
        self.hi = 0
        self.reading: asyncio.Future[None] | None = None
        """The read in flight, which every subscriber that needs it awaits."""
        self.started = 0
        self.completed = 0
        """Reads started, and the number of the last one finished."""
        self.subscribers = 0
        self.pages: dict[tuple[int, int, str | None], ActionPage] = {}
        """Pages without exclusions by (position, limit, binding), until the tail's end
        moves."""
        self.shared: dict[int, Any] = {}
        """Per action (by position): what transports build from it, once for everyone."""

    def covers(self, after: int, known_top: int | None) -> bool:
        if self.lo is None or after < self.lo:
            return False
        return known_top is not None and known_top <= self.hi

    def page(
        self, after: int, limit: int, exclude_device: str | None, binding: str | None = None
    ) -> ActionPage:
        """What ``read_actions`` would answer with the tail's end as the counter. A page
        with none of the subscriber's own actions is the same for every subscriber of its
        binding at that position: it is built once (and so is what transports make of it)."""
        start = bisect.bisect_right(self.seqs, after)
        rows = self.rows[start:]
        if binding is not None:
            rows = [r for r in rows if r.binding == binding]
        window = rows[: limit + 1]
        if exclude_device is None or all(r.device_id != exclude_device for r in window):
            key = (after, limit, binding)
            page = self.pages.get(key)
            if page is None:
                has_more = len(window) > limit
                taken = window[:limit]
                cursor = taken[-1].seq if has_more else max(self.hi, after)
                page = ActionPage(items=taken, cursor=cursor, has_more=has_more, shared=self.shared)
                self.pages[key] = page
            return page
        items: list[Any] = []
        has_more = False
        for row in rows:
            if exclude_device is not None and row.device_id == exclude_device:
                continue
            if len(items) == limit:
                has_more = True
                break
            items.append(row)
        cursor = items[-1].seq if has_more else max(self.hi, after)
        return ActionPage(items=items, cursor=cursor, has_more=has_more, shared=self.shared)

    def extend(self, top: int, rows: list[Any]) -> None:
        if self.lo is None:
            self.lo = top  # a new tail starts at the current end of the log
        else:
            self.rows += rows
            self.seqs += [int(r.seq) for r in rows]
        if top > self.hi:
            self.pages.clear()
        self.hi = max(self.hi, top)
        if len(self.rows) > CAPACITY:
            cut = len(self.rows) - CAPACITY
            self.lo = self.seqs[cut - 1]
            for seq in self.seqs[:cut]:
                self.shared.pop(seq, None)
            del self.rows[:cut], self.seqs[:cut]


class ActionTails:
    """One tail per tenant with live ``actions`` subscribers in this process."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.tails: dict[str, ActionTail] = {}

    def join(self, tenant_id: str) -> Callable[[], None]:
        tail = self.tails.get(tenant_id)
        if tail is None:
            tail = self.tails[tenant_id] = ActionTail(tenant_id)
        tail.subscribers += 1

        def leave() -> None:
            tail.subscribers -= 1
            if tail.subscribers == 0 and self.tails.get(tenant_id) is tail:
                del self.tails[tenant_id]

        return leave

    async def page(
        self,
        tenant_id: str,
        *,
        after: int | None,
        limit: int,
        exclude_device: str | None,
        known_top: int | None,
        binding: str | None = None,
    ) -> ActionPage:
        """The next page for a subscriber at ``after``; ``known_top`` is the highest log
        position it was notified of (None: unknown, e.g. a periodic re-check); ``binding``
        (a ``binding_identity``): only the actions stored with it."""
        tail = self.tails.get(tenant_id)
        position = after or 0
        if tail is None:
            return await self._read(tenant_id, after, limit, exclude_device, binding)
        await self._refresh(tail, position, known_top)
        if tail.lo is not None and position >= tail.lo:
            return tail.page(position, limit, exclude_device, binding)
        return await self._read(tenant_id, after, limit, exclude_device, binding)

    async def _refresh(self, tail: ActionTail, position: int, known_top: int | None) -> None:
        """Until the tail covers what the subscriber was notified of, or a read that
        started after it asked has finished: every subscriber woken by one commit awaits the
        same read (all at once, not one after another through a lock)."""
        asked = tail.started
        while tail.completed <= asked:
            if known_top is not None and tail.covers(position, known_top):
                return
            if tail.reading is None:
                tail.started += 1
                tail.reading = asyncio.ensure_future(self._extend(tail, tail.started))
            # a subscriber that goes away must not cancel the others' read
            await asyncio.shield(tail.reading)

    async def _extend(self, tail: ActionTail, number: int) -> None:
        try:
            await self._read_tail(tail)
        finally:
            tail.reading = None
            tail.completed = max(tail.completed, number)

    async def _read_tail(self, tail: ActionTail) -> None:
        async with read_transaction(self.engine) as conn:
            top = await action_top(conn, tail.tenant_id)
            rows: list[Any] = []
            if tail.lo is not None and top > tail.hi:
                t = ACTIONS
                query = (
                    sa.select(t)
                    .where(t.c.tenant_id == tail.tenant_id, t.c.seq > tail.hi, t.c.seq <= top)
                    .order_by(t.c.seq)
                    .limit(CAPACITY + 1)
                )
                rows = list((await conn.execute(query)).all())
                if len(rows) > CAPACITY:  # too far behind: start afresh at the end
                    tail.rows, tail.seqs, tail.lo, rows = [], [], None, []
                    tail.shared.clear()
                    tail.pages.clear()
        self.metrics.action_tail_reads.inc()
        tail.extend(top, rows)

    async def _read(
        self,
        tenant_id: str,
        after: int | None,
        limit: int,
        exclude_device: str | None,
        binding: str | None,
    ) -> ActionPage:
        async with read_transaction(self.engine) as conn:
            return await read_actions(
                conn,
                tenant_id,
                after=after,
                limit=limit,
                exclude_device=exclude_device,
                binding=binding,
            )


class _Wake:
    """A subscriber's alarm: set when actions of its tenant commit; ``top`` is the highest
    log position notified so far (None: none yet)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.top: int | None = None

    def on_commit(self, _tenant: str, kind: str, seq: int) -> None:
        if kind == "actions":
            self.top = seq if self.top is None else max(self.top, seq)
            self.event.set()


async def subscribe_actions(
    tails: ActionTails,
    broker: Broker,
    tenant_id: str,
    *,
    after: int | None,
    exclude_device: str | None,
    recheck_seconds: float,
    page_size: int = 100,
    binding: str | None = None,
) -> AsyncGenerator[ActionPage, None]:
    """The action log after ``after``: the first page at once (even empty: the subscriber
    is current), then a page whenever actions for it commit, each with the cursor to resume
    from. A notification only wakes it; a re-check every ``recheck_seconds`` covers a lost one.
    ``binding`` (a ``binding_identity``): only the actions stored with it, as ``read_actions``."""
    wake = _Wake()
    unsubscribe = broker.subscribe(tenant_id, wake.on_commit)
    leave = tails.join(tenant_id)
    cursor, first = after, True
    known_top: int | None = None
    try:
        while True:
            # answered from the tenant's in-memory tail when it can be: one read per commit
            # for all of the tenant's subscribers in this process, not one each
            page = await tails.page(
                tenant_id,
                after=cursor,
                limit=page_size,
                exclude_device=exclude_device,
                known_top=known_top,
                binding=binding,
            )
            cursor = page.cursor
            if first or page.items:
                yield page
                first = False
            if page.has_more:
                continue
            known_top = None  # a re-check after the timeout reads the counter again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.event.wait(), recheck_seconds)
                known_top = wake.top
            wake.event.clear()
    finally:
        leave()
        unsubscribe()
