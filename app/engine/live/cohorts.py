"""Live changes through a view (DESIGN.md §8): a tenant's view-bound subscribers form
cohorts, and each commit costs a cohort one view pull, whose pages go to all its members.

Why not the hub's window: a view's delta is not a stretch of the feed. An old record moves in
when a write links it, and a record moves out when a write to another entity unlinks it (a
member losing its guardian takes its classroom out of the guardian's view) — neither is in
the commit's rows. A view pull diffs the set its checkpoint names against what is visible
now (``app.engine.views.pull``), so it finds both.

A cohort is the subscribers with one shape (binding and entities) whose clients hold one
set: one checkpoint. On every wake-up of the tenant's ``ViewHub`` each cohort behind the
tenant's counter pulls once from its checkpoint (looping while ``has_more``) and offers each
page with something in it to every member; the members' clients then hold the set of its new
checkpoint. After a pull every cohort of one shape that read the same commit holds the
records visible at it, so their checkpoints name one state (they differ in their random
lineage only) and they merge: a shape costs one evaluation per commit, however many
subscribers joined from wherever.

A subscriber catches up with pulls of its own, then joins the cohort of its checkpoint. A
rebinding of its credential (``key set-view``, ``setDeviceView``) is read by the hub at the
tenant's next commit, or at once when this process hears of it (a credentials notification):
the subscriber moves to a cohort of its new binding at the same checkpoint, and the next
pull sends what moved in and out; unbound, it gets ``VIEW_CHANGED`` and its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from app.db import single_read
from app.engine.devices.devices import DEVICES
from app.engine.read.changes import ChangePage, Counter, read_counter
from app.engine.registry import EntitySpec
from app.engine.tenants import KEYS
from app.engine.views.pull import (
    Since,
    ViewCheckpoint,
    checkpoint_of,
    pull_view,
    quiet,
    quiet_page,
    view_changed,
)
from app.engine.views.spec import Binding, binding_fingerprint

if TYPE_CHECKING:
    from app.engine.live.hub import Hubs

log = logging.getLogger("syncgraph.hub")
QUEUE_SIZE = 64
"""Pages a subscriber may have waiting; past that it falls back to its own pulls."""


CONCURRENT_PULLS = 4
"""Cohorts of one tenant pulled at once in a pass (each holds a connection meanwhile)."""


@dataclass(frozen=True)
class Credential:
    """The key or device whose binding a subscriber follows."""

    key_id: str | None
    device_id: str | None


@dataclass(frozen=True)
class Shape:
    """What makes two subscribers' pages the same: the view and its values, the entities."""

    binding: Binding
    plurals: tuple[str, ...]


@dataclass(eq=False)
class ViewSubscriber:
    credential: Credential
    binding: Binding
    entities: list[EntitySpec]
    emitted: ViewCheckpoint | None = None
    """The checkpoint of its last emission: its client holds the set it names."""
    reached: ViewCheckpoint | None = None
    """Where its own pulls got to (the same set as ``emitted``, maybe a later seq)."""
    cohort: Cohort | None = None
    """None while it catches up on its own."""
    queue: asyncio.Queue[ChangePage] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lagging: bool = False
    final: ChangePage | None = None
    """The page that ends its stream (its credential was unbound)."""
    hub: ViewHub | None = None

    @property
    def shape(self) -> Shape:
        return Shape(self.binding, tuple(s.plural for s in self.entities))

    def offer(self, page: ChangePage) -> bool:
        """Queue ``page``; False when this switched the subscriber to its own pulls."""
        if self.lagging:
            return True  # it pulls from its last emission anyway
        try:
            self.queue.put_nowait(page)
        except asyncio.QueueFull:
            self.lagging = True  # drop the backlog; it pulls from its last emission
            while not self.queue.empty():
                self.queue.get_nowait()
        self.wake.set()
        return not self.lagging

    def end(self, page: ChangePage) -> None:
        self.final = page
        self.wake.set()


@dataclass(eq=False)
class Cohort:
    shape: Shape
    checkpoint: ViewCheckpoint
    """The set every member's client holds once it has taken its queued pages."""
    fingerprint: str
    """The binding's (``binding_fingerprint``): a checkpoint under another one is behind."""
    members: set[ViewSubscriber] = field(default_factory=set)

    @property
    def key(self) -> tuple[Shape, tuple[int, str, str]]:
        return self.shape, self.checkpoint.state

    def behind(self, counter: Counter) -> bool:
        return not quiet(self.checkpoint, counter, self.fingerprint)


class ViewHub:
    """A tenant's view-bound subscribers in this process, and their cohorts."""

    def __init__(self, tenant_id: str, hubs: Hubs) -> None:
        self.tenant_id = tenant_id
        self.hubs = hubs
        self.subscribers: set[ViewSubscriber] = set()
        self.cohorts: dict[tuple[Shape, tuple[int, str, str]], Cohort] = {}
        self.event = asyncio.Event()
        self.rebound = False
        """A credential of the tenant changed: read the bindings on the next pass."""
        self.task: asyncio.Task[None] | None = None

    def wake(self, *, credentials: bool = False) -> None:
        self.rebound = self.rebound or credentials
        self.event.set()

    def place(self, subscriber: ViewSubscriber, checkpoint: ViewCheckpoint) -> None:
        """Make ``subscriber`` a member of the cohort of its shape at ``checkpoint``; the
        next pass pulls that cohort if the tenant has moved on."""
        self.detach(subscriber)
        shape = subscriber.shape
        view = self.hubs.registry.views[shape.binding.name]
        self.file(Cohort(shape, checkpoint, binding_fingerprint(view, shape.binding), {subscriber}))
        self.event.set()

    def file(self, cohort: Cohort) -> None:
        """Put ``cohort`` under its key, merged into the cohort already there."""
        into = self.cohorts.setdefault(cohort.key, cohort)
        into.members |= cohort.members
        for member in cohort.members:
            member.cohort = into

    def detach(self, subscriber: ViewSubscriber) -> None:
        cohort, subscriber.cohort = subscriber.cohort, None
        if cohort is None:
            return
        cohort.members.discard(subscriber)
        if not cohort.members and self.cohorts.get(cohort.key) is cohort:
            del self.cohorts[cohort.key]

    async def run(self) -> None:
        while self.subscribers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), self.hubs.recheck_seconds)
            self.event.clear()
            try:
                await self.step()
            except Exception:  # a failed pull is retried on the next wake or recheck
                log.exception("view hub pass failed for tenant %s", self.tenant_id)
                self.event.set()
                await asyncio.sleep(1)

    async def step(self) -> None:
        """One pass: each cohort behind the tenant's counter pulls once (the counter alone
        answers a pass with no news)."""
        async with single_read(self.hubs.engine) as conn:
            counter = await read_counter(conn, self.tenant_id)
        if not (self.rebound or any(c.behind(counter) for c in self.cohorts.values())):
            return
        self.rebound = False
        await self.rebind()
        behind = [c for c in self.cohorts.values() if c.behind(counter)]
        # side by side, a few at a time: a pull waits on the database most of its time
        # (bench/README.md (h), subscribers), and a commit's emissions wait for the pass
        room = asyncio.Semaphore(CONCURRENT_PULLS)

        async def advance(cohort: Cohort) -> None:
            async with room:
                await self.advance(cohort)

        results = await asyncio.gather(*map(advance, behind), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def advance(self, cohort: Cohort) -> None:
        """Pull the cohort to the present, then file it under its new checkpoint (also
        when a pull failed: under the checkpoint of the last page it offered)."""
        if self.cohorts.get(cohort.key) is not cohort:
            return  # its members left while another cohort pulled
        del self.cohorts[cohort.key]
        try:
            await self.pull_through(cohort)
        finally:
            if cohort.members:
                self.file(cohort)

    async def pull_through(self, cohort: Cohort) -> None:
        """Offer the members each page with something in it, and every page after one of
        those (the last one says ``hasMore: false``)."""
        emitting = False
        while cohort.members:
            page = await self.pull(cohort)
            emitting = emitting or bool(page.size) or page.full_sync_required
            for member in list(cohort.members) if emitting else ():
                if page.full_sync_required:  # its set is gone (purged): start again
                    member.end(page)
                elif not member.offer(page):
                    self.hubs.metrics.lagging.inc()
                    self.detach(member)
            if page.full_sync_required:
                cohort.members.clear()
                return
            cohort.checkpoint = checkpoint_of(page)
            if not page.has_more:
                return

    async def pull(self, cohort: Cohort) -> ChangePage:
        binding, hubs = cohort.shape.binding, self.hubs
        page = await pull_view(
            hubs.engine,
            hubs.registry,
            self.tenant_id,
            hubs.registry.views[binding.name],
            binding,
            entities=next(iter(cohort.members)).entities,
            since=cohort.checkpoint,
            limit=hubs.page_size,
            columns=None,
            digest=False,
        )
        _count(hubs, binding, page)
        return page

    async def rebind(self) -> None:
        """Follow the credentials' current bindings (one read for the tenant's subscribers):
        a rebound subscriber moves to its new binding's cohort at the checkpoint it holds."""
        async with single_read(self.hubs.engine) as conn:
            bindings = await current_bindings(conn, {s.credential for s in self.subscribers})
        for subscriber in list(self.subscribers):
            binding = bindings.get(subscriber.credential)
            if binding == subscriber.binding or subscriber.final is not None:
                continue
            cohort = subscriber.cohort
            if binding is None:
                self.detach(subscriber)
                held = cohort.checkpoint if cohort else subscriber.emitted
                subscriber.end(view_changed(held or 0, subscriber.entities))
                continue
            self.hubs.count_view(subscriber.binding, -1)
            self.hubs.count_view(binding, +1)
            subscriber.binding = binding
            if cohort is not None:
                self.place(subscriber, cohort.checkpoint)


async def current_bindings(
    conn: AsyncConnection, credentials: set[Credential]
) -> dict[Credential, Binding | None]:
    """The binding each credential has now (a credential without a row has none)."""
    keys = sorted({c.key_id for c in credentials if c.key_id and not c.device_id})
    devices = sorted({c.device_id for c in credentials if c.device_id})
    out: dict[Credential, Binding | None] = {}
    for table, ids, of in ((KEYS, keys, _key), (DEVICES, devices, _device)):
        if ids:
            stmt = sa.select(table.c.id, table.c.view).where(table.c.id.in_(ids))
            rows = await conn.execute(stmt)
            out.update({of(str(r.id)): Binding.from_json(r.view) for r in rows})
    return out


def _key(key_id: str) -> Credential:
    return Credential(key_id, None)


def _device(device_id: str) -> Credential:
    return Credential(None, device_id)


# --- a subscriber's stream ------------------------------------------------------------------


async def subscribe_view_changes(
    hubs: Hubs,
    tenant_id: str,
    *,
    binding: Binding,
    credential: Credential,
    entities: list[EntitySpec],
    since: Since,
) -> AsyncGenerator[ChangePage, None]:
    """``subscribe_changes`` through a view: catch-up pages until current (the last one even
    when empty), then a page whenever a commit changed what the subscriber's client holds
    (it covers every commit since the previous one, and is shared by the cohort). The
    stream ends after a page that requires a full sync."""
    if isinstance(since, int):  # issued to the whole tenant, before the key was bound
        yield view_changed(since, entities)
        return
    subscriber = ViewSubscriber(credential, binding, entities, emitted=since)
    leave = hubs.join_view(tenant_id, subscriber)
    try:
        async for page in _follow(hubs, tenant_id, subscriber):
            yield page
    finally:
        leave()


async def _follow(
    hubs: Hubs, tenant_id: str, subscriber: ViewSubscriber
) -> AsyncIterator[ChangePage]:
    """Catch up with its own pulls, then take its cohort's pages; after lagging behind,
    catch up again (emitting only pages with news)."""
    assert subscriber.hub is not None
    quiet_catch_up = False
    while True:
        async for page in _catch_up(hubs, tenant_id, subscriber, quiet=quiet_catch_up):
            yield page
            if page.full_sync_required:
                return
        if subscriber.final is None:
            assert subscriber.reached is not None
            subscriber.hub.place(subscriber, subscriber.reached)
            async for page in _live(subscriber):
                yield page
        if subscriber.final is not None:
            yield subscriber.final
            return
        quiet_catch_up = True


async def _live(subscriber: ViewSubscriber) -> AsyncIterator[ChangePage]:
    """Its cohort's pages, until it lags behind or its stream is ended."""
    while True:
        await subscriber.wake.wait()
        subscriber.wake.clear()
        if subscriber.final is not None:
            return
        if subscriber.lagging:
            subscriber.lagging = False
            while not subscriber.queue.empty():
                subscriber.queue.get_nowait()
            return
        while not subscriber.queue.empty() and not subscriber.lagging:
            page = subscriber.queue.get_nowait()
            subscriber.emitted = checkpoint_of(page)
            yield page


async def _catch_up(
    hubs: Hubs, tenant_id: str, subscriber: ViewSubscriber, *, quiet: bool
) -> AsyncIterator[ChangePage]:
    since = subscriber.emitted
    while subscriber.final is None:
        page = await _own_pull(hubs, tenant_id, subscriber, since)
        if not quiet or page.size or page.full_sync_required:
            subscriber.emitted = checkpoint_of(page)
            yield page
        if page.full_sync_required:
            return
        since = subscriber.reached = checkpoint_of(page)
        if not page.has_more:
            return


async def _own_pull(
    hubs: Hubs, tenant_id: str, subscriber: ViewSubscriber, since: ViewCheckpoint | None
) -> ChangePage:
    """One catch-up page; a failed read (pool timeout, lost connection) is retried with
    backoff rather than ending the subscription."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((SQLAlchemyError, OSError, TimeoutError)),
        wait=wait_exponential(multiplier=0.1, max=5.0),
        before_sleep=lambda state: log.warning(
            "catch-up pull failed for tenant %s: %s; retrying",
            tenant_id,
            state.outcome.exception() if state.outcome else None,
        ),
    ):
        with attempt:
            async with hubs.catch_up_slots:
                return await _pull_from(hubs, tenant_id, subscriber, since)
    raise AssertionError("AsyncRetrying retries until a page is read")  # pragma: no cover


async def _pull_from(
    hubs: Hubs, tenant_id: str, subscriber: ViewSubscriber, since: ViewCheckpoint | None
) -> ChangePage:
    binding, entities = subscriber.binding, subscriber.entities
    view = hubs.registry.views[binding.name]
    if since is not None:
        async with single_read(hubs.engine) as conn:
            counter = await read_counter(conn, tenant_id)
        if quiet(since, counter, binding_fingerprint(view, binding)):
            return quiet_page(since, entities)
    page = await pull_view(
        hubs.engine,
        hubs.registry,
        tenant_id,
        view,
        binding,
        entities=entities,
        since=since,
        limit=hubs.page_size,
        columns=None,
        digest=False,
    )
    _count(hubs, binding, page)
    return page


def _count(hubs: Hubs, binding: Binding, page: ChangePage) -> None:
    hubs.metrics.pulled(page.size, view=binding.name)
    hubs.metrics.moved(binding.name, *page.moves)
