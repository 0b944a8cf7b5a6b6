"""The delta feed: everything a tenant changed after a checkpoint, in seq order.

Why nothing is missed: a writer stamps its rows and bumps the tenant counter as the last step
of its transaction, holding the counter row's lock until commit, so transactions commit in
seq order. A reader first reads the counter (``top``); every row with ``seq <= top`` was
committed before that read, so a page bounded by ``top`` can never later gain a row below its
checkpoint.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import statement
from app.engine.registry import EntitySpec
from app.engine.write.seq import TENANTS
from app.errors import BadRequest

FEED_COLUMNS = ("id", "seq", "created_seq", "deleted_at")


@dataclass
class EntityChanges:
    inserted: list[Any] = field(default_factory=list)
    updated: list[Any] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inserted) + len(self.updated) + len(self.deleted)


@dataclass(frozen=True)
class EntityDigest:
    """A collection's live records at a final checkpoint: count and checksum (§8)."""

    plural: str
    count: int
    checksum: str


@dataclass
class ChangePage:
    checkpoint: int
    has_more: bool
    full_sync_required: bool
    server_time: datetime
    entities: dict[str, EntityChanges]
    """By collection name; every requested entity is present, possibly empty."""
    full_sync_reason: str | None = None
    """TOMBSTONES_PURGED, CHECKPOINT_AHEAD or VIEW_CHANGED when ``full_sync_required``."""
    token: str | None = None
    """The checkpoint as the client sees it, when it is not ``checkpoint`` itself (a view's)."""
    digest: list[EntityDigest] | None = None
    """Per requested entity, on a final page whose digest was asked for."""
    moves: tuple[int, int] = (0, 0)
    """Through a view: records that moved in (written before the checkpoint) and out."""
    shared: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """What transports derive from a page that many live subscribers receive alike (the
    GraphQL object, executed results), so it is built once per page."""

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.entities.values())


SEQ_MAX = 2**63 - 1
"""The largest seq a 64-bit column holds."""


def parse_counter(value: str | None, what: str) -> int | None:
    """A checkpoint or cursor is a decimal number this server issued (a 64-bit seq or id).
    ``int()`` alone would also take ``" 7"``, ``"+7"``, ``"1_000"`` or ``"²"``, refuse a
    million digits (Python's int-string limit) and give 30 digits that overflow the column;
    a number beyond ``SEQ_MAX`` is read as ``SEQ_MAX``: one from the future, as any number
    past the latest seq is (``changes`` then asks for a full sync)."""
    if value is None:
        return None
    if not (value and value.isascii() and value.isdigit()):
        raise BadRequest(f"{what} {value[:40]!r} is not one this server issued")
    if len(value) > len(str(SEQ_MAX)):
        return SEQ_MAX
    return min(int(value), SEQ_MAX)


def parse_checkpoint(value: str | None) -> int | None:
    return parse_counter(value, "checkpoint")


async def read_changes(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    entities: list[EntitySpec],
    since: int | None,
    from_date: datetime | None = None,
    limit: int,
    columns: dict[str, set[str]] | None = None,
    counter: Counter | None = None,
) -> ChangePage:
    """One page of the feed over ``entities``; ``columns`` limits what is read per entity.
    ``counter``: the tenant's (seq, purged seq) when the caller just read it (``quiet_page``);
    rows are bounded by that seq, and commit order is seq order, so every row up to it is
    committed (PostgreSQL reads each statement in a snapshot of its own anyway)."""
    if since is not None and from_date is not None:
        raise BadRequest("give either since or fromDate, not both")
    now = datetime.now(UTC)
    top, purged = counter or await read_counter(conn, tenant_id)
    page = _page_without_rows(entities, since, top, purged, now)
    if page is not None:
        return page
    empty = {spec.plural: EntityChanges() for spec in entities}
    feed = Feed(tenant_id, since, from_date, top)
    if len(entities) == 1:  # one entity: its own rows decide the page, in one read
        return await _single(conn, entities[0], feed, limit, columns, now)
    cutoff, has_more = await _cutoff(conn, entities, feed, limit)
    pages = empty
    for spec in entities:
        if cutoff is not None:
            rows = await _rows(conn, spec, feed, cutoff, columns)
            pages[spec.plural] = _classify(rows, since, from_date)
    checkpoint = cutoff if has_more and cutoff is not None else top
    return ChangePage(checkpoint, has_more, False, now, pages)


async def quiet_page(
    conn: AsyncConnection, tenant_id: str, *, entities: list[EntitySpec], since: int
) -> tuple[ChangePage | None, Counter]:
    """The page of a poll with nothing to read, from the tenant's counter alone: one
    statement, which needs no transaction (the page ``read_changes`` would return, since it
    depends on the counter only); None when there may be rows after ``since``. With the
    counter read, for ``read_changes`` to go on from."""
    counter = await read_counter(conn, tenant_id)
    return _page_without_rows(entities, since, *counter, datetime.now(UTC)), counter


def idle_page(entities: list[EntitySpec], since: int) -> ChangePage:
    """The page of a poll whose checkpoint is the tenant's latest seq."""
    empty = {spec.plural: EntityChanges() for spec in entities}
    return ChangePage(since, False, False, datetime.now(UTC), empty)


def _page_without_rows(
    entities: list[EntitySpec], since: int | None, top: int, purged: int, now: datetime
) -> ChangePage | None:
    """The page when no row can be in it: ``since`` purged or never issued (full sync
    required), ``since`` is the latest seq (the idle poll), or no entity asked."""
    empty = {spec.plural: EntityChanges() for spec in entities}
    if since is not None and (since < purged or since > top):
        reason = "CHECKPOINT_AHEAD" if since > top else "TOMBSTONES_PURGED"
        return ChangePage(since, False, True, now, empty, full_sync_reason=reason)
    if since == top or not entities:
        return ChangePage(top if since is None else max(since, top), False, False, now, empty)
    return None


async def _single(
    conn: AsyncConnection,
    spec: EntitySpec,
    feed: Feed,
    limit: int,
    columns: dict[str, set[str]] | None,
    now: datetime,
) -> ChangePage:
    rows = await _rows(conn, spec, feed, feed.top, columns, limit=limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    checkpoint = rows[-1].seq if has_more else feed.top
    changes = _classify(rows, feed.since, feed.from_date)
    return ChangePage(checkpoint, has_more, False, now, {spec.plural: changes})


Counter = tuple[int, int]
"""A tenant's (latest seq, purged seq)."""


COUNTER = sa.select(TENANTS.c.seq, TENANTS.c.purged_seq).where(
    TENANTS.c.id == sa.bindparam("tenant")
)


async def read_counter(conn: AsyncConnection, tenant_id: str) -> Counter:
    row = (await conn.execute(COUNTER, {"tenant": tenant_id})).one_or_none()
    return (int(row.seq), int(row.purged_seq)) if row else (0, 0)


@dataclass(frozen=True)
class Feed:
    """Which stretch of a tenant's feed a read covers: after ``since`` (None: from the
    start, live records only) or updated from ``from_date``, up to ``top``. Its statements
    are built from parameters, once per entity and kind of read (``app.db.statement``):
    building them cost more than running them on a small page."""

    tenant_id: str
    since: int | None
    from_date: datetime | None
    top: int

    @property
    def kind(self) -> str:
        return "date" if self.from_date is not None else "full" if self.since is None else "since"

    def params(self, **more: Any) -> dict[str, Any]:
        params = {"tenant": self.tenant_id, "since": self.since or 0, "top": self.top, **more}
        if self.from_date is not None:
            params["from_date"] = self.from_date
        return params

    def conditions(self, spec: EntitySpec) -> list[Any]:
        t = spec.table
        conds: list[Any] = [
            t.c.tenant_id == sa.bindparam("tenant"),
            t.c.seq > sa.bindparam("since", type_=sa.BigInteger),
            t.c.seq <= sa.bindparam("top", type_=sa.BigInteger),
        ]
        if self.from_date is not None:
            conds.append(t.c.updated_at >= sa.bindparam("from_date", type_=t.c.updated_at.type))
        elif self.since is None:
            conds.append(t.c.deleted_at.is_(None))
        return conds


async def _cutoff(
    conn: AsyncConnection, entities: list[EntitySpec], feed: Feed, limit: int
) -> tuple[int | None, bool]:
    """The highest seq of this page and whether more follow: index-only reads of seq."""
    seqs: list[int] = []
    for spec in entities:
        t = spec.table

        def build(spec: EntitySpec = spec, t: sa.Table = t) -> sa.Select[Any]:
            return (
                sa.select(t.c.seq)
                .where(*feed.conditions(spec))
                .order_by(t.c.seq)
                .limit(sa.bindparam("limit", type_=sa.Integer))
            )

        stmt = statement(conn, ("feed-seqs", spec.plural, feed.kind), build)
        seqs.extend((await conn.execute(stmt, feed.params(limit=limit + 1))).scalars().all())
    if not seqs:
        return None, False
    seqs.sort()
    has_more = len(seqs) > limit
    return seqs[min(limit, len(seqs)) - 1], has_more


async def _rows(
    conn: AsyncConnection,
    spec: EntitySpec,
    feed: Feed,
    cutoff: int,
    columns: dict[str, set[str]] | None,
    *,
    limit: int | None = None,
) -> list[Any]:
    t = spec.table
    selected = None if columns is None else frozenset(columns.get(spec.plural, ()))

    def build() -> sa.Select[Any]:
        stmt = (
            sa.select(*selected_columns(spec, columns))
            .where(*feed.conditions(spec), t.c.seq <= sa.bindparam("cutoff", type_=sa.BigInteger))
            .order_by(t.c.seq)
        )
        return stmt if limit is None else stmt.limit(sa.bindparam("limit", type_=sa.Integer))

    key = ("feed-rows", spec.plural, feed.kind, selected, limit is None)
    stmt = statement(conn, key, build)
    params = (
        feed.params(cutoff=cutoff) if limit is None else feed.params(cutoff=cutoff, limit=limit)
    )
    return records(await conn.execute(stmt, params))


def selected_columns(spec: EntitySpec, columns: dict[str, set[str]] | None) -> list[Any]:
    """The columns a page reads of ``spec``: those selected (``columns``, by collection; None:
    all) and those every page needs (the feed's, and ``created_at`` to tell inserts)."""
    t = spec.table
    if columns is None:
        return list(t.c)
    wanted = {*FEED_COLUMNS, "created_at", *columns.get(spec.plural, ())}
    return [column for column in t.c if column.name in wanted]


def _classify(rows: list[Any], since: int | None, from_date: datetime | None) -> EntityChanges:
    changes = EntityChanges()
    for row in rows:
        if row.deleted_at is not None:
            changes.deleted.append(row.id)
        elif _is_new(row, since, from_date):
            changes.inserted.append(row)
        else:
            changes.updated.append(row)
    return changes


def _is_new(row: Any, since: int | None, from_date: datetime | None) -> bool:
    if from_date is not None:
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        return bool(created >= from_date)
    return since is None or row.created_seq > since


async def tenant_digest(
    conn: AsyncConnection, tenant_id: str, entities: list[EntitySpec], top: int
) -> list[EntityDigest]:
    """The digest of every live record of ``entities`` (an unbound credential's view: the
    whole tenant), read in the caller's snapshot at counter ``top``."""
    from app.engine.views.pull import entity_digest

    out = []
    for spec in entities:
        t = spec.table
        stmt = sa.select(t.c.id, t.c.version).where(
            t.c.tenant_id == tenant_id, t.c.deleted_at.is_(None), t.c.seq <= top
        )
        out.append(entity_digest(spec.plural, ((r[0], r[1]) for r in await conn.execute(stmt))))
    return out


@dataclass
class Window:
    """Raw rows of a stretch of the feed, unclassified: the hub reads one per commit and
    every subscriber classifies it against its own checkpoint."""

    since: int
    checkpoint: int
    has_more: bool
    rows: dict[str, list[Any]]
    views: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Subscribers' pages of this window by (entities, checkpoint, emitted): subscribers that
    are current share one."""


async def read_window(
    conn: AsyncConnection, tenant_id: str, *, entities: list[EntitySpec], since: int, limit: int
) -> Window:
    """Every row (tombstones included) with ``since < seq``, up to ``limit`` rows."""
    top, _purged = await read_counter(conn, tenant_id)
    rows: dict[str, list[Any]] = {}
    if top <= since:
        return Window(since, since, False, rows)
    feed = Feed(tenant_id, since, None, top)
    cutoff, has_more = await _cutoff(conn, entities, feed, limit)
    if cutoff is None:
        return Window(since, top, False, rows)
    for spec in entities:
        found = await _rows(conn, spec, feed, cutoff, None)
        if found:
            rows[spec.plural] = found
    return Window(since, cutoff if has_more else top, has_more, rows)


def classify(rows: list[Any], since: int | None) -> EntityChanges:
    """Rows as one client sees them from its checkpoint ``since``."""
    return _classify([r for r in rows if since is None or r.seq > since], since, None)


@functools.lru_cache(maxsize=256)
def _record_type(fields: tuple[str, ...]) -> Any:
    return collections.namedtuple("Record", fields)


def records(result: Any) -> list[Any]:
    """Rows as named tuples: attribute reads on them are C-level, about ten times cheaper
    than on SQLAlchemy rows, and pulls read every selected attribute of every row."""
    make = _record_type(tuple(result.keys()))._make
    return [make(row) for row in result]
