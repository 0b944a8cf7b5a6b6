"""Tenants and API keys. Keys are random, shown once, and stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import notify_commit
from app.engine.live.notify import CREDENTIALS
from app.engine.models import ApiKey, Tenant, utcnow
from app.engine.views.spec import Binding
from app.errors import BadRequest, NotFound

SCOPES = ("sync:read", "sync:write", "sync:manage")
KEYS = ApiKey.__table__  # type: ignore[attr-defined]
TENANTS = Tenant.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class IssuedKey:
    id: str
    key: str
    tenant_id: str | None
    scopes: tuple[str, ...]
    system: bool
    view: Binding | None = None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> tuple[str, ...]:
    scopes = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise BadRequest(f"scopes must be among {', '.join(SCOPES)}; got {scopes!r}")
    return tuple(dict.fromkeys(scopes))


async def create_tenant(conn: AsyncConnection, name: str, *, tenant_id: str | None = None) -> str:
    if not name.strip():
        raise BadRequest("a tenant needs a name")
    tenant_id = str(uuid.UUID(tenant_id)) if tenant_id else str(uuid.uuid4())
    await conn.execute(
        sa.insert(TENANTS).values(id=tenant_id, name=name, seq=0, purged_seq=0, created_at=utcnow())
    )
    return tenant_id


async def get_tenant(conn: AsyncConnection, tenant_id: str) -> dict[str, object] | None:
    row = (await conn.execute(sa.select(TENANTS).where(TENANTS.c.id == tenant_id))).one_or_none()
    return dict(row._mapping) if row else None


async def list_tenants(conn: AsyncConnection) -> list[dict[str, object]]:
    rows = await conn.execute(sa.select(TENANTS).order_by(TENANTS.c.created_at))
    return [dict(r._mapping) for r in rows.all()]


async def create_key(
    conn: AsyncConnection,
    *,
    tenant_id: str | None,
    scopes: tuple[str, ...],
    system: bool = False,
    view: Binding | None = None,
) -> IssuedKey:
    """A new API key; the clear text exists only in the returned value. ``view``: the view
    the key is bound to (checked by the caller with ``check_binding``)."""
    if system == (tenant_id is not None):
        raise BadRequest("a key belongs to one tenant, or is a --system key for all of them")
    if view is not None:
        check_view_scopes(scopes, system=system)
    if tenant_id is not None and await get_tenant(conn, tenant_id) is None:
        raise NotFound(f"no tenant {tenant_id}")
    key_id = str(uuid.uuid4())
    key = f"sgk_{secrets.token_urlsafe(32)}"
    await conn.execute(
        sa.insert(KEYS).values(
            id=key_id,
            tenant_id=tenant_id,
            key_hash=hash_secret(key),
            scopes=list(scopes),
            system=system,
            view=view.as_json() if view else None,
            created_at=utcnow(),
        )
    )
    return IssuedKey(key_id, key, tenant_id, scopes, system, view)


def check_view_scopes(scopes: tuple[str, ...] | list[str], *, system: bool = False) -> None:
    """A view-bound key reads and writes through its view; it cannot manage the tenant."""
    if "sync:manage" in scopes:
        raise BadRequest("a view-bound key cannot hold sync:manage; drop it or the view")
    if system:
        raise BadRequest("a system key cannot be bound to a view; bind a tenant's key")


async def set_key_view(conn: AsyncConnection, key_id: str, view: Binding | None) -> str:
    """Bind a key to ``view`` (None: unbind); the key's clients see the new view on their
    next pull. Told to every process's credential cache, as a revocation is."""
    row = (
        await conn.execute(
            sa.select(KEYS.c.tenant_id, KEYS.c.scopes, KEYS.c.system).where(KEYS.c.id == key_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"no key {key_id}")
    if view is not None:
        check_view_scopes(list(row.scopes), system=bool(row.system))
    await conn.execute(
        sa.update(KEYS).where(KEYS.c.id == key_id).values(view=view.as_json() if view else None)
    )
    tenant_id = str(row.tenant_id or "")
    await notify_commit(conn, tenant_id, CREDENTIALS, 0)
    return tenant_id


_KEY_WITH_TENANT = (
    sa.select(KEYS, TENANTS.c.name.label("tenant_name"))
    .select_from(KEYS.outerjoin(TENANTS, TENANTS.c.id == KEYS.c.tenant_id))
    .where(KEYS.c.key_hash == sa.bindparam("key_hash"), KEYS.c.revoked_at.is_(None))
)
"""Built once: it runs for every request."""


async def find_key_with_tenant(conn: AsyncConnection, key: str) -> dict[str, object] | None:
    """The live (not revoked) key with this secret, and ``tenant_name`` (None for a system
    key, or a tenant that is gone): one query for the credentials of every request."""
    row = (await conn.execute(_KEY_WITH_TENANT, {"key_hash": hash_secret(key)})).one_or_none()
    return dict(row._mapping) if row else None


async def revoke_key(conn: AsyncConnection, key_id: str) -> str | None:
    """Revoke a key (idempotent): the tenant it belonged to ("" for a system key), or None
    when there is no such key. Told to every process's credential cache as
    ``remove_device`` is."""
    row = (
        await conn.execute(
            sa.update(KEYS)
            .where(KEYS.c.id == key_id)
            .values(revoked_at=sa.func.coalesce(KEYS.c.revoked_at, utcnow()))
            .returning(KEYS.c.tenant_id)
        )
    ).one_or_none()
    if row is None:
        return None
    tenant_id = str(row.tenant_id or "")
    await notify_commit(conn, tenant_id, CREDENTIALS, 0)
    return tenant_id
