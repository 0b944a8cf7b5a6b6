"""Idempotency keys: a mutation's answer is stored per tenant and key in the same
transaction as the mutation's writes, and a retry gets it again instead of writing twice.

The invariant, whatever moment the process dies: the key's row, its stored answer and the
mutation's writes commit together or not at all. A retry therefore either finds nothing
(the first attempt wrote nothing; it runs) or finds the answer (it is replayed). There is
no "still running" state that outlives a process: the key's row is inserted inside the
write transaction, so a concurrent duplicate waits on the unique key (PostgreSQL) or on the
writer queue (SQLite) until the first commits or rolls back, then replays or runs.

The request edge declares a keyed request with ``keyed_request``; the write road
(``open_write``) takes the key in its transaction and, instead of committing, parks the
transaction on the request; the edge then stores the final answer and commits (``settle``)
or rolls back (``abandon``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import dialect_insert, read_transaction, write_transaction
from app.engine.models import IdempotencyKey
from app.errors import BadRequest, SyncError

KEYS = IdempotencyKey.__table__  # type: ignore[attr-defined]
KEY_MAX = 255


class KeyTaken(SyncError):
    """Another request with this key committed first: this one's writes are rolled back
    and the edge answers with the stored answer instead."""

    code = "IDEMPOTENCY_KEY_REUSED"


@dataclass
class Found:
    outcome: Literal["new", "replay", "reused"]
    response: dict[str, Any] | None = None


@dataclass
class Parked:
    """A keyed request's write transaction, held open until its answer is stored."""

    stack: AsyncExitStack
    conn: AsyncConnection
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    """What the write road does after a commit (publishing to this process's hubs)."""
    wrote: bool = False


@dataclass
class KeyedRequest:
    tenant_id: str
    key: str
    digest: str
    ttl: timedelta
    parked: Parked | None = None
    taken: bool = False
    """Set when another request with this key committed while this one ran."""


_CURRENT: ContextVar[KeyedRequest | None] = ContextVar("syncgraph_keyed_request", default=None)


def request_hash(query: str | None, variables: Any, operation_name: str | None) -> str:
    body = {"query": query, "variables": variables or {}, "operationName": operation_name}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_key(key: str) -> None:
    if not key or len(key) > KEY_MAX:
        raise BadRequest(f"Idempotency-Key must be 1 to {KEY_MAX} characters")


@contextmanager
def keyed_request(keyed: KeyedRequest) -> Iterator[KeyedRequest]:
    """Within the block, the write road stores ``keyed``'s answer with its writes."""
    token = _CURRENT.set(keyed)
    try:
        yield keyed
    finally:
        _CURRENT.reset(token)


def current(tenant_id: str) -> KeyedRequest | None:
    """The keyed request a write of ``tenant_id`` belongs to, if any."""
    keyed = _CURRENT.get()
    return keyed if keyed is not None and keyed.tenant_id == tenant_id else None


async def lookup(engine: AsyncEngine, keyed: KeyedRequest) -> Found:
    """What is stored under the key: nothing (or expired: run), the answer to replay, or
    another body's answer (``reused``). Reads only: nothing is claimed before the writes."""
    async with read_transaction(engine) as conn:
        row = (await conn.execute(sa.select(KEYS).where(*_where(keyed)))).one_or_none()
    if row is None or _expired(row.created_at, keyed.ttl):
        return Found("new")
    if row.request_hash != keyed.digest:
        return Found("reused")
    return Found("replay", row.response)


async def take_key(conn: AsyncConnection, keyed: KeyedRequest) -> None:
    """Insert the key's row in the write transaction ``conn`` (its answer comes just before
    the commit). A concurrent request holding the key makes this wait for its end; if it
    committed, raise ``KeyTaken``."""
    await _drop_expired(conn, keyed)
    inserted = await conn.execute(_insert(conn, keyed, None))
    if not inserted.rowcount:
        keyed.taken = True
        raise KeyTaken("a request with this Idempotency-Key was answered meanwhile")


async def settle(engine: AsyncEngine, keyed: KeyedRequest, response: dict[str, Any]) -> bool:
    """Store ``response`` as the key's answer and commit it with the parked writes (or in a
    transaction of its own when the request wrote nothing). False: another request with
    this key answered first (nothing of this one is kept)."""
    parked, keyed.parked = keyed.parked, None
    if parked is None:
        async with write_transaction(engine) as conn:
            await _drop_expired(conn, keyed)
            stored = await conn.execute(_insert(conn, keyed, response))
        return bool(stored.rowcount)
    try:
        await parked.conn.execute(sa.update(KEYS).where(*_where(keyed)).values(response=response))
    except BaseException as exc:
        await parked.stack.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await parked.stack.aclose()  # the commit: writes, key and answer at once
    for publish in parked.after_commit:
        publish()
    return True


async def abandon(keyed: KeyedRequest) -> bool:
    """Roll back a parked transaction (an answer that must not be replayed, or a request
    that never finished). True when writes were rolled back."""
    parked, keyed.parked = keyed.parked, None
    if parked is None:
        return False
    rolled_back = _Abandoned("the answer was not stored")
    await parked.stack.__aexit__(_Abandoned, rolled_back, None)
    return parked.wrote


async def purge_keys(engine: AsyncEngine, *, ttl: timedelta) -> int:
    async with write_transaction(engine) as conn:
        result = await conn.execute(
            sa.delete(KEYS).where(KEYS.c.created_at < datetime.now(UTC) - ttl)
        )
    return int(result.rowcount or 0)


class _Abandoned(Exception):
    """Thrown into a parked transaction's context to make it roll back."""


def _where(keyed: KeyedRequest) -> tuple[sa.ColumnElement[bool], ...]:
    return (KEYS.c.tenant_id == keyed.tenant_id, KEYS.c.key == keyed.key)


def _insert(conn: AsyncConnection, keyed: KeyedRequest, response: dict[str, Any] | None) -> Any:
    return (
        dialect_insert(conn, KEYS)
        .values(
            tenant_id=keyed.tenant_id,
            key=keyed.key,
            request_hash=keyed.digest,
            response=response,
            created_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing()
    )


async def _drop_expired(conn: AsyncConnection, keyed: KeyedRequest) -> None:
    await conn.execute(
        sa.delete(KEYS).where(*_where(keyed), KEYS.c.created_at < datetime.now(UTC) - keyed.ttl)
    )


def _expired(created: datetime, ttl: timedelta) -> bool:
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return created < datetime.now(UTC) - ttl
