"""Devices: registration, token lookup, removal. Tokens are credentials (stored hashed);
secrets sign actions and are stored so the server can verify them."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import notify_commit
from app.engine.live.notify import CREDENTIALS
from app.engine.models import Device
from app.engine.tenants import TENANTS, hash_secret
from app.engine.views.spec import Binding

DEVICES = Device.__table__  # type: ignore[attr-defined]
DEVICE_PREFIX = "sgd_"
"""Device tokens start with it (API keys with ``sgk_``): authentication looks in one place."""


@dataclass(frozen=True)
class Registration:
    device_id: str
    token: str
    secret: str


async def register_device(
    conn: AsyncConnection, tenant_id: str, name: str, *, view: Binding | None = None
) -> Registration:
    """A new device, bound to ``view`` (checked by the caller; None: the whole tenant)."""
    device_id = str(uuid.uuid4())
    token = f"{DEVICE_PREFIX}{secrets.token_urlsafe(32)}"
    secret = secrets.token_hex(32)
    await conn.execute(
        sa.insert(DEVICES).values(
            id=device_id,
            tenant_id=tenant_id,
            name=name,
            token_hash=hash_secret(token),
            secret=secret,
            last_sequence=-1,
            view=view.as_json() if view else None,
            created_at=datetime.now(UTC),
        )
    )
    return Registration(device_id, token, secret)


async def device_with_tenant(conn: AsyncConnection, token: str) -> dict[str, Any] | None:
    """``device_by_token`` plus ``tenant_name``, in one query."""
    row = (
        await conn.execute(
            sa.select(DEVICES, TENANTS.c.name.label("tenant_name"))
            .select_from(DEVICES.outerjoin(TENANTS, TENANTS.c.id == DEVICES.c.tenant_id))
            .where(DEVICES.c.token_hash == hash_secret(token))
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


async def device_by_token(conn: AsyncConnection, token: str) -> dict[str, Any] | None:
    """The device a token belongs to, removed or not."""
    row = (
        await conn.execute(sa.select(DEVICES).where(DEVICES.c.token_hash == hash_secret(token)))
    ).one_or_none()
    return dict(row._mapping) if row else None


async def remove_device(conn: AsyncConnection, tenant_id: str, device_id: str) -> bool:
    """Revoke a device's token (idempotent). False when the tenant has no such device.
    Every server process's credential cache hears of it at commit (a ``CREDENTIALS``
    notification; the caller's own process publishes it to its broker)."""
    result = await conn.execute(
        sa.update(DEVICES)
        .where(DEVICES.c.tenant_id == tenant_id, DEVICES.c.id == device_id)
        .values(removed_at=sa.func.coalesce(DEVICES.c.removed_at, datetime.now(UTC)))
    )
    if not result.rowcount:
        return False
    await notify_commit(conn, tenant_id, CREDENTIALS, 0)
    return True


async def set_device_view(
    conn: AsyncConnection, tenant_id: str, device_id: str, view: Binding | None
) -> bool:
    """Bind a device to ``view`` (None: unbind); its next pull moves records in and out.
    False when the tenant has no such device. Told to every process's credential cache at
    commit, as ``remove_device`` is: a cached principal would keep the old view."""
    result = await conn.execute(
        sa.update(DEVICES)
        .where(DEVICES.c.tenant_id == tenant_id, DEVICES.c.id == device_id)
        .values(view=view.as_json() if view else None)
    )
    if not result.rowcount:
        return False
    await notify_commit(conn, tenant_id, CREDENTIALS, 0)
    return True


async def is_removed(conn: AsyncConnection, token: str) -> bool:
    """True only for a token that was revoked: an unknown token (an empty or reset server)
    is never reported removed, so no client wipes itself by mistake."""
    device = await device_by_token(conn, token)
    return device is not None and device["removed_at"] is not None


async def list_devices(conn: AsyncConnection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(
        DEVICES.c.id,
        DEVICES.c.tenant_id,
        DEVICES.c.name,
        DEVICES.c.last_sequence,
        DEVICES.c.created_at,
        DEVICES.c.removed_at,
    ).order_by(DEVICES.c.created_at)
    if tenant_id is not None:
        query = query.where(DEVICES.c.tenant_id == tenant_id)
    return [dict(r._mapping) for r in (await conn.execute(query)).all()]
