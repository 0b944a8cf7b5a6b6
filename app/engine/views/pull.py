"""Pulling through a view: the delta against what the client holds, not against a time.

A view-bound client's checkpoint is ``<seq>.<set>.<binding>.<lineage>``: ``set`` names the
ids the client holds (stored once per distinct set in ``view_sets``), ``seq`` says every
record of that set whose seq is at most ``seq`` is held at its current version, and
``binding`` is the fingerprint of the view definition and parameter values it was issued
under (``UNSETTLED`` on a page that has more). A pull reads, in one snapshot: the tenant's
counter (``top``) and the records visible now (ids with seq and version, see ``visible``);
it sends every held id no longer visible as deleted (a move-out, a deletion), then every
visible record the client lacks (a move-in, however old) or holds at a seq after ``seq``, in
seq order. Move-ins behind the cursor and move-outs that touched no row of their own (a
classroom losing a member) are therefore never missed, and a rebinding, a deleted parameter
record or a redefined view is just another difference.

Paging keeps the invariant: deletions go first (a page of only deletions keeps ``seq``), then
upserts in seq order, the page's checkpoint being the last one's seq. An idle poll (``seq``
is the tenant's latest, same binding, from a page that had no more) is answered from the
counter alone.

A client may apply an answer and then ask again from the same checkpoint (the checkpoint it
was given was lost with a crash, or it could not tell the reply arrived). So what each answer
moved (the ids it sent that the set lacked, the ids it deleted) is noted under the checkpoint
it answered, and a pull from that checkpoint counts them as held maybe: deleted if no longer
visible, sent again if visible. ``lineage`` is random, so that clients which happen to hold
the same set at the same seq do not share these notes.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import (
    dialect_insert,
    in_parameter,
    in_values,
    lock_keys,
    snapshot_transaction,
    statement,
    write_transaction,
)
from app.engine.models import ViewSet
from app.engine.read.changes import (
    ChangePage,
    Counter,
    EntityChanges,
    EntityDigest,
    parse_counter,
    read_counter,
    records,
    selected_columns,
)
from app.engine.registry import EntitySpec, Registry
from app.engine.views.spec import Binding, View, binding_fingerprint
from app.engine.views.visible import Visible, visible
from app.errors import BadRequest

VIEW_SETS = ViewSet.__table__  # type: ignore[attr-defined]
EMPTY = "0"
"""The name of the empty set (stored nowhere)."""
UNSETTLED = "00000000"
"""The binding slot of a page that has more: a rebinding's pages all keep the tenant's latest
seq, so the counter alone cannot tell the rest of the difference is still to come."""


@dataclass(frozen=True)
class ViewCheckpoint:
    seq: int
    set_id: str
    fingerprint: str
    lineage: str = ""
    """8 random hex digits (none in a three-part checkpoint): what was answered from a
    checkpoint is noted under its whole text."""

    def __str__(self) -> str:
        text = f"{self.seq}.{self.set_id}.{self.fingerprint}"
        return f"{text}.{self.lineage}" if self.lineage else text

    @property
    def state(self) -> tuple[int, str, str]:
        """What it says of the client's copy (seq, set, binding), its lineage aside: clients
        in one state may be sent the same pages (a subscriber cohort)."""
        return self.seq, self.set_id, self.fingerprint


Since = int | ViewCheckpoint | None


def parse_since(value: str | None) -> Since:
    """A checkpoint this server issued: a seq (the whole tenant) or a view checkpoint."""
    if value is None or "." not in value:
        return parse_counter(value, "checkpoint")
    parts = value.split(".")
    if (
        len(parts) not in (3, 4)
        or not _hex(parts[1], (1, 24))
        or not all(_hex(part, (8,)) for part in parts[2:])
    ):
        raise BadRequest(f"checkpoint {value[:60]!r} is not one this server issued")
    seq = parse_counter(parts[0], "checkpoint")
    assert seq is not None
    return ViewCheckpoint(seq, *parts[1:])


def _hex(text: str, lengths: tuple[int, ...]) -> bool:
    return len(text) in lengths and all(c in "0123456789abcdef" for c in text)


def quiet(since: ViewCheckpoint, counter: Counter, fingerprint: str) -> bool:
    """Whether a poll from ``since`` has nothing to read: no change in the tenant since, the
    same view and parameter values, and nothing left over from ``since``'s own pull."""
    settled = since.fingerprint != UNSETTLED  # a binding hashed to it only loses the shortcut
    return settled and since.seq == counter[0] and since.fingerprint == fingerprint


def quiet_page(since: ViewCheckpoint, entities: list[EntitySpec]) -> ChangePage:
    """The answer to a poll with nothing to read: no change, the same checkpoint."""
    page = ChangePage(
        since.seq, False, False, datetime.now(UTC), {s.plural: EntityChanges() for s in entities}
    )
    page.token = str(since)
    return page


def checkpoint_of(page: ChangePage) -> ViewCheckpoint:
    """The view checkpoint a page of ``pull_view`` (or ``quiet_page``) ends at."""
    since = parse_since(page.token)
    assert isinstance(since, ViewCheckpoint), page.token
    return since


async def pull_view(
    engine: AsyncEngine,
    registry: Registry,
    tenant_id: str,
    view: View,
    binding: Binding,
    *,
    entities: list[EntitySpec],
    since: ViewCheckpoint | None,
    limit: int,
    columns: dict[str, set[str]] | None,
    digest: bool,
) -> ChangePage:
    fingerprint = binding_fingerprint(view, binding)
    plurals = [spec.plural for spec in entities]
    now = datetime.now(UTC)
    async with snapshot_transaction(engine) as conn:
        top, _purged = await read_counter(conn, tenant_id)
        if since is not None and since.seq > top:
            return _full_sync(since, plurals, now, "CHECKPOINT_AHEAD")
        stored, answered = await load_held(conn, tenant_id, since, now)
        if stored is None:
            return _full_sync(since, plurals, now, "TOMBSTONES_PURGED")
        holding = _holding(stored.ids, answered, plurals)
        seen = await visible(conn, registry, tenant_id, view, binding, only=set(plurals))
        plan = _plan(holding, seen, plurals, since.seq if since else 0, top, limit)
        page = await _page(conn, tenant_id, entities, plan, holding.sure, columns, now)
    set_id = await _keep_set(engine, tenant_id, since, stored, plan.held, plurals, now)
    issued = UNSETTLED if plan.has_more else fingerprint
    token = ViewCheckpoint(plan.checkpoint, set_id, issued, secrets.token_hex(4))
    notes = {token: plan.unsure}
    if since is not None:
        notes[since] = {p: ids - set(answered.get(p, ())) for p, ids in plan.moves.items()}
    await note_answers(engine, tenant_id, notes)
    page.token = str(token)
    page.moves = (plan.moved_in, len(plan.gone))
    if digest and not page.has_more:
        page.digest = [_entity_digest(p, seen.records.get(p, {}).items()) for p in plurals]
    return page


async def _keep_set(
    engine: AsyncEngine,
    tenant_id: str,
    since: ViewCheckpoint | None,
    stored: StoredSet,
    held: dict[str, set[str]],
    plurals: list[str],
    now: datetime,
) -> str:
    """The name of the set the client holds after the page: ``since``'s when unchanged."""
    if since is not None and held == {p: set(stored.ids.get(p, ())) for p in plurals}:
        if now - stored.used_at > TOUCH_AFTER:
            await touch_set(engine, tenant_id, [since.set_id, answers_id(since)], now)
        return since.set_id
    return await store_set(engine, tenant_id, held)


Ids = dict[str, set[str]]
"""Collection -> ids."""


@dataclass
class _Holding:
    """What a client pulling from a checkpoint holds. ``sure``: held, each one whose seq is
    at most the checkpoint's at its current version. ``maybe``: also what an answer already
    given from this checkpoint moved (held or not, as the client applied that answer or not)."""

    sure: Ids
    maybe: Ids


def _holding(
    stored: dict[str, list[str]], answered: dict[str, list[str]], plurals: list[str]
) -> _Holding:
    ids = {p: set(stored.get(p, ())) for p in plurals}
    moved = {p: set(answered.get(p, ())) for p in plurals}
    return _Holding(
        {p: ids[p] - moved[p] for p in plurals}, {p: ids[p] | moved[p] for p in plurals}
    )


@dataclass
class _Plan:
    gone: list[tuple[str, str]]
    send: list[tuple[int, str, str]]
    has_more: bool
    checkpoint: int
    held: Ids
    """What the client surely holds after this page (its set)."""
    unsure: Ids
    """What it may hold after this page, beyond ``held``."""
    moves: Ids
    """What this page moved: a client asking again from the same checkpoint may hold it or
    not."""
    moved_in: int = 0
    """Records sent that the client lacked though they were written before its checkpoint."""


def _plan(
    holding: _Holding,
    seen: Visible,
    plurals: list[str],
    since: int,
    top: int,
    limit: int,
) -> _Plan:
    sure, maybe = holding.sure, holding.maybe
    gone = [(p, id_) for p in plurals for id_ in sorted(maybe[p] - seen.ids(p))]
    send = sorted(
        (stamp[0], p, id_)
        for p in plurals
        for id_, stamp in seen.records.get(p, {}).items()
        if stamp[0] > since or id_ not in sure[p]
    )
    if len(gone) > limit or (len(gone) == limit and send):
        gone, send, has_more, checkpoint = gone[:limit], [], True, since
    else:
        room = limit - len(gone)
        has_more = len(send) > room
        send = send[:room]
        checkpoint = max(since, send[-1][0]) if has_more else top
    after = {p: set(sure[p]) for p in plurals}
    unsure = {p: maybe[p] - sure[p] for p in plurals}
    moves: Ids = {p: set() for p in plurals}
    for p, id_ in gone:
        after[p].discard(id_)
        unsure[p].discard(id_)
        moves[p].add(id_)
    for _seq, p, id_ in send:
        after[p].add(id_)
        unsure[p].discard(id_)
        if id_ not in sure[p]:  # (a held record sent again is sent again on a retry anyway)
            moves[p].add(id_)
    moved_in = sum(1 for seq, p, id_ in send if seq <= since and id_ not in sure[p])
    return _Plan(gone, send, has_more, checkpoint, after, unsure, moves, moved_in)


async def _page(
    conn: AsyncConnection,
    tenant_id: str,
    entities: list[EntitySpec],
    plan: _Plan,
    held: dict[str, set[str]],
    columns: dict[str, set[str]] | None,
    now: datetime,
) -> ChangePage:
    pages = {spec.plural: EntityChanges() for spec in entities}
    for plural, id_ in plan.gone:
        pages[plural].deleted.append(id_)
    wanted: dict[str, list[str]] = {}
    for _seq, plural, id_ in plan.send:
        wanted.setdefault(plural, []).append(id_)
    for spec in entities:
        ids = wanted.get(spec.plural)
        if not ids:
            continue
        t = spec.table
        stmt = (
            sa.select(*selected_columns(spec, columns))
            .where(t.c.tenant_id == tenant_id, in_values(conn, t.c.id, ids))
            .order_by(t.c.seq)
        )
        for row in records(await conn.execute(stmt)):
            target = pages[spec.plural]
            (target.updated if row.id in held[spec.plural] else target.inserted).append(row)
    return ChangePage(plan.checkpoint, plan.has_more, False, now, pages)


def _full_sync(since: Any, plurals: list[str], now: datetime, reason: str) -> ChangePage:
    page = ChangePage(
        since.seq, False, True, now, {p: EntityChanges() for p in plurals}, full_sync_reason=reason
    )
    page.token = str(since)
    return page


def view_changed(since: Any, entities: list[EntitySpec]) -> ChangePage:
    """A checkpoint issued under another binding kind (the whole tenant, or a view this
    credential is no longer bound to): the client starts again from null."""
    seq = since.seq if isinstance(since, ViewCheckpoint) else int(since)
    page = ChangePage(
        seq,
        False,
        True,
        datetime.now(UTC),
        {spec.plural: EntityChanges() for spec in entities},
        full_sync_reason="VIEW_CHANGED",
    )
    page.token = str(since)
    return page


# --- the stored sets --------------------------------------------------------------------------


def set_id_of(ids: dict[str, set[str]]) -> tuple[str, bytes | None]:
    """The set's name (24 hex digits of its SHA-256; ``EMPTY`` for no record) and its JSON."""
    if not any(ids.values()):
        return EMPTY, None
    body = orjson.dumps({p: sorted(v) for p, v in sorted(ids.items())})
    return hashlib.sha256(body).hexdigest()[:24], body


@dataclass(frozen=True)
class StoredSet:
    ids: dict[str, list[str]]
    used_at: datetime


TOUCH_AFTER = timedelta(days=1)
"""A set still in use is marked so at most this often; ``syncgraph purge`` deletes the sets
nobody used within the tombstone retention (their clients then pull from null)."""


async def store_set(engine: AsyncEngine, tenant_id: str, ids: dict[str, set[str]]) -> str:
    """Store the set (once: the same set always has the same name) and return its name."""
    set_id, body = set_id_of(ids)
    if body is None:
        return set_id
    async with engine.connect() as conn:
        exists = (
            await conn.execute(
                sa.select(VIEW_SETS.c.created_at).where(
                    VIEW_SETS.c.tenant_id == tenant_id, VIEW_SETS.c.id == set_id
                )
            )
        ).first()
    now = datetime.now(UTC)
    if exists is not None:
        if now - _aware(exists[0]) > TOUCH_AFTER:
            await touch_set(engine, tenant_id, [set_id], now)
        return set_id
    async with write_transaction(engine) as conn:
        insert = dialect_insert(conn, VIEW_SETS).values(
            tenant_id=tenant_id, id=set_id, ids=orjson.loads(body), created_at=now
        )
        await conn.execute(insert.on_conflict_do_nothing())
    return set_id


async def touch_set(engine: AsyncEngine, tenant_id: str, ids: list[str], now: datetime) -> None:
    """Mark the rows of ``view_sets`` named ``ids`` (sets, notes of answers) as in use."""
    async with write_transaction(engine) as conn:
        await conn.execute(
            sa.update(VIEW_SETS)
            .where(VIEW_SETS.c.tenant_id == tenant_id, in_values(conn, VIEW_SETS.c.id, ids))
            .values(created_at=now)
        )


async def load_held(
    conn: AsyncConnection, tenant_id: str, since: ViewCheckpoint | None, now: datetime
) -> tuple[StoredSet | None, dict[str, list[str]]]:
    """What the client of ``since`` may hold: the set the checkpoint names (None: purged)
    and the notes of what was answered from it (collection -> ids; none noted: {}), both
    read in one statement."""
    if since is None:
        return StoredSet({}, now), {}
    answers = answers_id(since)
    names = [answers] if since.set_id == EMPTY else [since.set_id, answers]

    def build() -> sa.Select[Any]:
        v = VIEW_SETS
        return sa.select(v.c.id, v.c.ids, v.c.created_at).where(
            v.c.tenant_id == sa.bindparam("tenant"), in_parameter(conn, v.c.id, "names")
        )

    query = statement(conn, "view-held", build)
    rows = {row[0]: row for row in await conn.execute(query, {"tenant": tenant_id, "names": names})}
    answered = dict(rows[answers][1]) if answers in rows else {}
    if since.set_id == EMPTY:
        return StoredSet({}, now), answered
    row = rows.get(since.set_id)
    return (None if row is None else StoredSet(dict(row[1]), _aware(row[2]))), answered


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- what was answered from a checkpoint --------------------------------------------------------


def answers_id(checkpoint: ViewCheckpoint) -> str:
    """The ``view_sets`` row noting what was answered from ``checkpoint`` (no set name has a
    colon, so the two never meet)."""
    return "answers:" + hashlib.sha256(str(checkpoint).encode()).hexdigest()[:24]


async def note_answers(
    engine: AsyncEngine, tenant_id: str, notes: dict[ViewCheckpoint, Ids]
) -> None:
    """Add ids to the notes of each checkpoint (collection -> ids), under a lock of the
    checkpoint: two answers from one checkpoint may be noted at once."""
    rows = {answers_id(checkpoint): ids for checkpoint, ids in notes.items() if any(ids.values())}
    if not rows:
        return
    names = sorted(rows)
    now = datetime.now(UTC)
    async with write_transaction(engine) as conn:
        await lock_keys(conn, f"{tenant_id}:view_answers", names)
        stored = await conn.execute(
            sa.select(VIEW_SETS.c.id, VIEW_SETS.c.ids).where(
                VIEW_SETS.c.tenant_id == tenant_id, in_values(conn, VIEW_SETS.c.id, names)
            )
        )
        before = {name: dict(ids) for name, ids in stored}
        for name in names:
            body = _union(before.get(name, {}), rows[name])
            insert = dialect_insert(conn, VIEW_SETS).values(
                tenant_id=tenant_id, id=name, ids=body, created_at=now
            )
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[VIEW_SETS.c.tenant_id, VIEW_SETS.c.id],
                    set_={"ids": body, "created_at": now},
                )
            )


def _union(stored: dict[str, list[str]], more: Ids) -> dict[str, list[str]]:
    plurals = sorted(set(stored) | {p for p, ids in more.items() if ids})
    return {p: sorted({*stored.get(p, ()), *more.get(p, ())}) for p in plurals}


# --- the digest -------------------------------------------------------------------------------


def _entity_digest(plural: str, stamps: Iterable[tuple[str, tuple[int, int]]]) -> EntityDigest:
    return entity_digest(plural, ((id_, stamp[1]) for id_, stamp in stamps))


def entity_digest(plural: str, versions: Iterable[tuple[str, int]]) -> EntityDigest:
    """DESIGN.md §8: the count of live records and the sum, mod 2³², of the first 4 bytes
    (big-endian) of SHA-256 of ``"<id>:<version>"``, as 8 lower-case hex digits."""
    total = count = 0
    for id_, version in versions:
        digest = hashlib.sha256(f"{id_}:{version}".encode()).digest()
        total += int.from_bytes(digest[:4], "big")
        count += 1
    return EntityDigest(plural, count, f"{total % 2**32:08x}")
