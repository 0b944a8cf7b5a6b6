"""Idempotency keys: a mutation's first response is stored per tenant and key, and a retry
gets it again instead of writing twice. Concurrent requests with one key apply once: the
later ones wait for the first to finish."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import dialect_insert, write_transaction
from app.engine.models import IdempotencyKey
from app.errors import BadRequest

KEYS = IdempotencyKey.__table__  # type: ignore[attr-defined]
KEY_MAX = 255
ABANDONED_AFTER = timedelta(seconds=60)
"""A claim still pending after this long belongs to a request that died: take it over."""
POLL_SECONDS = 0.05


@dataclass
class Claim:
    outcome: Literal["new", "replay", "reused"]
    response: dict[str, Any] | None = None


def request_hash(query: str | None, variables: Any, operation_name: str | None) -> str:
    body = {"query": query, "variables": variables or {}, "operationName": operation_name}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def claim(
    engine: AsyncEngine,
    tenant_id: str,
    key: str,
    digest: str,
    *,
    ttl: timedelta,
    wait: float = 30.0,
) -> Claim:
    """Take the key for this request, or say why not (stored answer, other body)."""
    if not key or len(key) > KEY_MAX:
        raise BadRequest(f"Idempotency-Key must be 1 to {KEY_MAX} characters")
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        found = await _try_claim(engine, tenant_id, key, digest, ttl=ttl)
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise BadRequest("a request with this Idempotency-Key is still running; retry later")
        await asyncio.sleep(POLL_SECONDS)


async def _try_claim(
    engine: AsyncEngine, tenant_id: str, key: str, digest: str, *, ttl: timedelta
) -> Claim | None:
    now = datetime.now(UTC)
    where = (KEYS.c.tenant_id == tenant_id, KEYS.c.key == key)
    async with write_transaction(engine) as conn:
        row = (await conn.execute(sa.select(KEYS).where(*where))).one_or_none()
        if row is not None:
            created = (
                row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            )
            expired = created < now - ttl
            abandoned = row.response is None and created < now - ABANDONED_AFTER
            if not (expired or abandoned):
                if row.request_hash != digest:
                    return Claim("reused")
                return None if row.response is None else Claim("replay", row.response)
            await conn.execute(sa.delete(KEYS).where(*where))
        inserted = await conn.execute(
            dialect_insert(conn, KEYS)
            .values(tenant_id=tenant_id, key=key, request_hash=digest, created_at=now)
            .on_conflict_do_nothing()
        )
        return Claim("new") if inserted.rowcount else None


async def store(engine: AsyncEngine, tenant_id: str, key: str, response: dict[str, Any]) -> None:
    async with write_transaction(engine) as conn:
        await conn.execute(
            sa.update(KEYS)
            .where(KEYS.c.tenant_id == tenant_id, KEYS.c.key == key)
            .values(response=response)
        )


async def release(engine: AsyncEngine, tenant_id: str, key: str) -> None:
    """Forget a claim whose answer must not be replayed (INTERNAL, UNAUTHENTICATED)."""
    async with write_transaction(engine) as conn:
        await conn.execute(sa.delete(KEYS).where(KEYS.c.tenant_id == tenant_id, KEYS.c.key == key))


async def purge_keys(engine: AsyncEngine, *, ttl: timedelta) -> int:
    async with write_transaction(engine) as conn:
        result = await conn.execute(
            sa.delete(KEYS).where(KEYS.c.created_at < datetime.now(UTC) - ttl)
        )
    return int(result.rowcount or 0)
