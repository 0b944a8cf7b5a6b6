"""Live changes: one hub per tenant per process. A commit notification wakes the hub, which
reads the new stretch of the feed once and hands it to every current subscriber; each
subscriber keeps its own checkpoint, so one behind (a reconnect, a slow consumer) catches
up with paged reads of its own and then rejoins the shared stream."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from app.db import read_transaction
from app.engine.live.cohorts import ViewHub, ViewSubscriber
from app.engine.live.notify import CREDENTIALS
from app.engine.metrics import Metrics
from app.engine.read.changes import ChangePage, Window, classify, read_changes, read_window
from app.engine.registry import EntitySpec, Registry
from app.engine.views.pull import Since, ViewCheckpoint, view_changed
from app.engine.views.spec import Binding
from app.engine.write.seq import current_seq

log = logging.getLogger("syncgraph.hub")
QUEUE_SIZE = 64
"""Windows a subscriber may have waiting; past that it falls back to its own reads."""


@dataclass(eq=False)
class Subscriber:
    entities: list[EntitySpec]
    checkpoint: int
    queue: asyncio.Queue[Window] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    lagging: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    hub: Hub | None = None
    emitted: int | None = None
    """The checkpoint of its last emission, which is what its client knows: records created
    after it are ``inserted``. ``checkpoint`` runs ahead of it over commits with nothing for
    this subscriber, and over a commit whose rows changed again before the hub read them
    (the database keeps only their latest version, which comes with the later commit)."""

    def offer(self, window: Window) -> bool:
        """Queue ``window``; False when this switched the subscriber to its own reads."""
        if self.lagging:
            return True  # it re-reads from its checkpoint anyway
        try:
            self.queue.put_nowait(window)
        except asyncio.QueueFull:
            self.lagging = True  # drop the backlog; it re-reads from its checkpoint
            while not self.queue.empty():
                self.queue.get_nowait()
        self.wake.set()
        return not self.lagging


class Hub:
    def __init__(self, tenant_id: str, hubs: Hubs) -> None:
        self.tenant_id = tenant_id
        self.hubs = hubs
        self.subscribers: set[Subscriber] = set()
        self.last: int | None = None
        self.ends: set[int] = set()
        """Last seqs of the commits notified and not read yet: a window that spans several
        commits is cut there, so that a current subscriber gets one emission per commit."""
        self.event = asyncio.Event()
        self.started = asyncio.Event()
        """Set once ``last`` is known: the hub's windows start there."""
        self.task: asyncio.Task[None] | None = None

    def wake(self, seq: int) -> None:
        if self.last is None or seq < 0 or seq > self.last:
            if seq >= 0:
                self.ends.add(seq)
            self.event.set()

    async def run(self) -> None:
        self.event.set()  # the first pass reads where the feed is now
        while self.subscribers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), self.hubs.recheck_seconds)
            self.event.clear()
            try:
                if self.last is None:
                    async with self.hubs.engine.connect() as conn:
                        self.last = await current_seq(conn, self.tenant_id)
                    self.ends = {s for s in self.ends if s > self.last}
                    self.started.set()
                await self.read()
            except Exception:  # a failed read is retried on the next wake or recheck
                log.exception("hub read failed for tenant %s", self.tenant_id)
                self.event.set()
                await asyncio.sleep(1)

    async def read(self) -> None:
        assert self.last is not None
        has_more = True
        while has_more and self.subscribers:
            started = time.perf_counter()
            async with read_transaction(self.hubs.engine) as conn:
                window = await read_window(
                    conn,
                    self.tenant_id,
                    entities=self.hubs.registry.ordered(),
                    since=self.last,
                    limit=self.hubs.page_size,
                )
            self.hubs.metrics.hub_reads.inc()
            if window.checkpoint <= self.last:
                self.ends = {s for s in self.ends if s > self.last}
                return
            ends = sorted(s for s in self.ends if self.last < s < window.checkpoint)
            self.ends = {s for s in self.ends if s > window.checkpoint}
            self.last, has_more = window.checkpoint, window.has_more
            for part in split_window(window, ends):
                for subscriber in list(self.subscribers):
                    if not subscriber.offer(part):
                        self.hubs.metrics.lagging.inc()
            self.hubs.metrics.fanout.observe(time.perf_counter() - started)


class Hubs:
    """The process's hubs, one per tenant with subscribers (and one per tenant with
    view-bound subscribers, ``app.engine.live.cohorts``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        registry: Registry,
        metrics: Metrics,
        *,
        recheck_seconds: float = 30.0,
        page_size: int = 1000,
        catch_up_reads: int | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.metrics = metrics
        self.recheck_seconds = recheck_seconds
        self.page_size = page_size
        self.hubs: dict[str, Hub] = {}
        self.view_hubs: dict[str, ViewHub] = {}
        self.catch_up_slots = asyncio.Semaphore(catch_up_reads or _half_the_pool(engine))
        """Subscribers' own reads (first catch-up, lagging) share these connections, so
        that a herd of them (many connecting, or a saturated process where all lag at
        once) cannot take the whole pool from writers and the hubs."""

    def on_commit(self, tenant_id: str, kind: str, seq: int) -> None:
        hub = self.hubs.get(tenant_id)
        if hub is not None and kind == "changes":
            hub.wake(seq)
        view_hub = self.view_hubs.get(tenant_id)
        if view_hub is not None and kind in ("changes", CREDENTIALS):
            view_hub.wake(credentials=kind == CREDENTIALS)

    def wake_all(self) -> None:
        """After a lost listener connection: notifications may have been missed."""
        for hub in self.hubs.values():
            hub.wake(-1)
        for view_hub in self.view_hubs.values():
            view_hub.wake(credentials=True)

    def join(self, tenant_id: str, subscriber: Subscriber) -> Callable[[], None]:
        hub = self.hubs.get(tenant_id)
        if hub is None:
            hub = self.hubs[tenant_id] = Hub(tenant_id, self)
        hub.subscribers.add(subscriber)
        subscriber.hub = hub
        self.metrics.subscribers.inc()
        if hub.task is None or hub.task.done():
            hub.task = asyncio.get_running_loop().create_task(hub.run())

        def leave() -> None:
            hub.subscribers.discard(subscriber)
            self.metrics.subscribers.dec()
            if not hub.subscribers:
                hub.event.set()  # let the task see it is done
                if self.hubs.get(tenant_id) is hub:
                    del self.hubs[tenant_id]

        return leave

    def join_view(self, tenant_id: str, subscriber: ViewSubscriber) -> Callable[[], None]:
        """Count a view-bound subscriber in its tenant's ``ViewHub``; it joins a cohort
        once caught up (``ViewHub.place``)."""
        hub = self.view_hubs.get(tenant_id)
        if hub is None:
            hub = self.view_hubs[tenant_id] = ViewHub(tenant_id, self)
        hub.subscribers.add(subscriber)
        subscriber.hub = hub
        self.metrics.subscribers.inc()
        self.count_view(subscriber.binding, +1)
        if hub.task is None or hub.task.done():
            hub.task = asyncio.get_running_loop().create_task(hub.run())

        def leave() -> None:
            hub.detach(subscriber)
            hub.subscribers.discard(subscriber)
            self.metrics.subscribers.dec()
            self.count_view(subscriber.binding, -1)
            if not hub.subscribers:
                hub.event.set()  # let the task see it is done
                if self.view_hubs.get(tenant_id) is hub:
                    del self.view_hubs[tenant_id]

        return leave

    def count_view(self, binding: Binding, change: int) -> None:
        self.metrics.view_subscribers.labels(binding.name).inc(change)

    async def close(self) -> None:
        hubs: list[Hub | ViewHub] = [*self.hubs.values(), *self.view_hubs.values()]
        for hub in hubs:
            if hub.task is not None:
                hub.task.cancel()
        self.hubs.clear()
        self.view_hubs.clear()


async def subscribe_changes(
    hubs: Hubs,
    tenant_id: str,
    *,
    entities: list[EntitySpec],
    since: Since,
    page_size: int = 1000,
) -> AsyncGenerator[ChangePage, None]:
    """Catch-up pages until current (the last one even when empty), then one page per
    commit that touches ``entities``. Every page carries the checkpoint to resume from."""
    if isinstance(since, ViewCheckpoint):  # issued through a view this key has left
        yield view_changed(since, entities)
        return
    subscriber = Subscriber(entities=entities, checkpoint=since or 0, emitted=since)
    leave = hubs.join(tenant_id, subscriber)
    try:
        # The hub's windows start where the feed was when the hub started (a new hub reads
        # that first): the catch-up must end there or later, or a commit in between would be
        # missed, or, read here, arrive merged with later ones instead of one per commit.
        assert subscriber.hub is not None
        await subscriber.hub.started.wait()
        async for page in _catch_up(hubs, tenant_id, subscriber, since, page_size):
            yield page
        while True:
            await subscriber.wake.wait()
            subscriber.wake.clear()
            if subscriber.lagging:
                subscriber.lagging = False
                async for page in _catch_up(
                    hubs, tenant_id, subscriber, subscriber.emitted, page_size, quiet=True
                ):
                    yield page
                continue
            while not subscriber.queue.empty():
                live = _from_window(subscriber, subscriber.queue.get_nowait())
                if live is not None:
                    yield live
    finally:
        leave()


async def _catch_up(
    hubs: Hubs,
    tenant_id: str,
    subscriber: Subscriber,
    since: int | None,
    page_size: int,
    *,
    quiet: bool = False,
) -> AsyncIterator[ChangePage]:
    while True:
        page = await _read_page(hubs, tenant_id, subscriber.entities, since, page_size)
        subscriber.checkpoint = max(subscriber.checkpoint, page.checkpoint)
        if not quiet or page.size or page.full_sync_required:
            subscriber.emitted = page.checkpoint
            yield page
        if not page.has_more or page.full_sync_required:
            return
        since = page.checkpoint


async def _read_page(
    hubs: Hubs, tenant_id: str, entities: list[EntitySpec], since: int | None, page_size: int
) -> ChangePage:
    """One catch-up page; a failed read (pool timeout, lost connection) is retried with
    backoff rather than ending the subscription."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((SQLAlchemyError, OSError, TimeoutError)),
        wait=wait_exponential(multiplier=0.1, max=5.0),
        before_sleep=_log_retry(tenant_id),
    ):
        with attempt:
            async with hubs.catch_up_slots, read_transaction(hubs.engine) as conn:
                return await read_changes(
                    conn, tenant_id, entities=entities, since=since, limit=page_size
                )
    raise AssertionError("AsyncRetrying retries until a page is read")  # pragma: no cover


def _log_retry(tenant_id: str) -> Callable[[RetryCallState], None]:
    def log_it(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("catch-up read failed for tenant %s: %s; retrying", tenant_id, exc)

    return log_it


def _half_the_pool(engine: AsyncEngine) -> int:
    size = getattr(engine.pool, "size", None)
    return max(1, int(size()) // 2) if callable(size) else 2


def split_window(window: Window, ends: list[int]) -> list[Window]:
    """``window`` cut after each seq of ``ends`` (ascending, inside the window): one window
    per commit. A part may be empty (its rows changed again later); it still moves every
    subscriber's checkpoint on, so the next part follows without a gap."""
    if not ends:
        return [window]
    parts: list[Window] = []
    since = window.since
    for end in [*ends, window.checkpoint]:
        rows: dict[str, list[Any]] = {}
        for plural, found in window.rows.items():  # each in seq order
            lo = bisect.bisect_right(found, since, key=_seq)
            hi = bisect.bisect_right(found, end, key=_seq)
            if hi > lo:
                rows[plural] = found[lo:hi]
        last = end == window.checkpoint
        parts.append(Window(since, end, window.has_more if last else False, rows))
        since = end
    return parts


def _seq(row: Any) -> int:
    return int(row.seq)


def _from_window(subscriber: Subscriber, window: Window) -> ChangePage | None:
    """The subscriber's view of a hub window, or None when nothing in it is for it."""
    since = subscriber.checkpoint
    if window.checkpoint <= since:
        return None
    if window.since > since:  # a gap: should not happen while current; read it ourselves
        subscriber.lagging = True
        subscriber.wake.set()
        return None
    subscriber.checkpoint = window.checkpoint
    key = (tuple(s.plural for s in subscriber.entities), since, subscriber.emitted)
    page: ChangePage | None
    if key in window.views:
        page = window.views[key]  # the same page as another subscriber's: built once
    else:
        pages = {
            s.plural: classify(
                [row for row in window.rows.get(s.plural, []) if row.seq > since],
                subscriber.emitted,
            )
            for s in subscriber.entities
        }
        page = ChangePage(window.checkpoint, False, False, datetime.now(UTC), pages)
        window.views[key] = page = page if page.size else None
    if page is None:
        return None
    subscriber.emitted = window.checkpoint
    return page
