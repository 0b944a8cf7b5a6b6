"""Credentials -> Principal: API keys (tenant or system) and, later, device tokens."""

from __future__ import annotations

import time
import typing
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import single_read
from app.engine.devices.devices import DEVICE_PREFIX, device_with_tenant
from app.engine.live.notify import CREDENTIALS, ForeignWrites
from app.engine.tenants import find_key_with_tenant, get_tenant, hash_secret
from app.engine.values import parse_uuid
from app.engine.views.spec import Binding
from app.errors import BadRequest, Forbidden, SyncError, Unauthenticated

TENANT_HEADERS = ("x-tenant-id", "community-id")
SCOPE_RANK = {"sync:read": 1, "sync:write": 2, "sync:manage": 3}


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    tenant_name: str
    scopes: frozenset[str]
    device_id: str | None = None
    key_id: str | None = None
    view: Binding | None = None
    """The view the key or device is bound to (None: the whole tenant)."""

    def allows(self, scope: str) -> bool:
        """Scopes nest: manage ⊃ write ⊃ read."""
        need = SCOPE_RANK[scope]
        return any(SCOPE_RANK.get(s, 0) >= need for s in self.scopes)


@dataclass
class AuthResult:
    """What the credentials of a request proved: a principal, or why not (raised lazily,
    so that introspection and ``isDeviceRemoved`` work without credentials)."""

    principal: Principal | None = None
    error: SyncError | None = None
    token: str | None = None


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class CredentialCache:
    """Principals proved within the last ``ttl`` seconds, by the credential's SHA-256 and the
    tenant header it came with (a different header is a different lookup: no cross-tenant
    hit). Only successes are kept, so a key or device made a moment ago anywhere works at
    once. Invariants: an entry is served for at most ``ttl`` seconds after the database
    proved it; after ``revoke()`` nothing proved before it is served again, not even by a
    lookup that was in flight when it ran (``put`` takes the generation it started in)."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self.generation = 0
        self.watch: ForeignWrites | None = None
        """Where other processes' revocations are not heard (SQLite): what says one may
        have written (then everything is forgotten)."""
        self._seen_writes = 0
        self._entries: OrderedDict[tuple[str, str | None], tuple[float, Principal]] = OrderedDict()

    def get(self, token: str, tenant: str | None) -> Principal | None:
        key = (hash_secret(token), tenant)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.watch is not None and self.watch.current() != self._seen_writes:
            self._seen_writes = self.watch.generation
            self.revoke()
            return None
        if self.clock() >= entry[0]:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, token: str, tenant: str | None, principal: Principal, generation: int) -> None:
        """Keep ``principal``, proved by a lookup that started in ``generation``."""
        if self.ttl <= 0 or generation != self.generation:
            return
        self._entries[(hash_secret(token), tenant)] = (self.clock() + self.ttl, principal)
        while len(self._entries) > self.max_entries:  # the oldest go first
            self._entries.popitem(last=False)

    def revoke(self) -> None:
        """Forget every principal: a credential was revoked here or in another process (or
        the news of it may have been lost). Revocations are rare; the cache refills."""
        self.generation += 1
        self._entries.clear()

    def on_commit(self, _tenant_id: str, kind: str, _seq: int) -> None:
        """The broker's listener: a ``credentials`` commit (any process) revokes."""
        if kind == CREDENTIALS:
            self.revoke()


async def authenticate(
    engine: AsyncEngine,
    *,
    authorization: str | None,
    tenant: str | None,
    cache: CredentialCache | None = None,
) -> AuthResult:
    token = bearer(authorization)
    if authorization and token is None:
        return AuthResult(error=Unauthenticated("use 'Authorization: Bearer <key>'"))
    if token is None:
        return AuthResult(
            error=Unauthenticated("credentials required: 'Authorization: Bearer <key>'")
        )
    cached = cache.get(token, tenant) if cache is not None else None
    if cached is not None:
        return AuthResult(principal=cached, token=token)
    generation = cache.generation if cache is not None else 0
    try:
        principal = await _principal(engine, token, tenant)
    except SyncError as exc:
        return AuthResult(error=exc, token=token)
    if cache is not None:
        cache.put(token, tenant, principal, generation)
    return AuthResult(principal=principal, token=token)


async def _principal(engine: AsyncEngine, token: str, tenant: str | None) -> Principal:
    wanted = None
    if tenant:
        wanted = parse_uuid(tenant)
        if wanted is None:
            raise BadRequest(f"tenant {tenant!r} is not a tenant id (UUID)")
    async with single_read(engine) as conn:
        # one query per request: the key (or device) with its tenant's name; the prefix
        # says which of the two a token is (sgk_ keys, sgd_ device tokens)
        key = None if token.startswith(DEVICE_PREFIX) else await find_key_with_tenant(conn, token)
        if key is None:
            device = await _device_principal(conn, token, wanted)
            if device is not None:
                return device
            raise Unauthenticated("invalid credentials")
        scopes = frozenset(typing.cast(list[str], key["scopes"]))
        if key["system"]:
            if wanted is None:
                raise BadRequest("a system key must name the tenant in the X-Tenant-Id header")
            return await _tenant_principal(conn, wanted, scopes=scopes, key_id=str(key["id"]))
        return _owned_principal(key, wanted, "key", scopes=scopes, key_id=str(key["id"]))


async def _tenant_principal(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    scopes: frozenset[str],
    key_id: str | None = None,
    device_id: str | None = None,
) -> Principal:
    row = await get_tenant(conn, tenant_id)
    if row is None:
        raise Forbidden(f"no tenant {tenant_id}")
    return Principal(
        tenant_id=tenant_id,
        tenant_name=str(row["name"]),
        scopes=scopes,
        key_id=key_id,
        device_id=device_id,
    )


DEVICE_SCOPES = frozenset({"sync:read"})


async def _device_principal(
    conn: AsyncConnection, token: str, wanted: str | None
) -> Principal | None:
    """A device token reads (changes, lists, subscriptions) and uses the action log."""
    device = await device_with_tenant(conn, token)
    if device is None:
        return None
    if device["removed_at"] is not None:
        raise DeviceRemoved(str(device["id"]), str(device["tenant_id"]))
    return _owned_principal(
        device, wanted, "device", scopes=DEVICE_SCOPES, device_id=str(device["id"])
    )


def _owned_principal(
    row: Mapping[str, Any],
    wanted: str | None,
    what: str,
    *,
    scopes: frozenset[str],
    key_id: str | None = None,
    device_id: str | None = None,
) -> Principal:
    """The principal of a key or device row read with its tenant's name (``tenant_name``):
    it must belong to the tenant a header names, and the tenant must exist."""
    tenant_id = str(row["tenant_id"])
    if wanted is not None and wanted != tenant_id:
        raise Forbidden(f"this {what} does not belong to that tenant")
    if row["tenant_name"] is None:
        raise Forbidden(f"no tenant {tenant_id}")
    return Principal(
        tenant_id=tenant_id,
        tenant_name=str(row["tenant_name"]),
        scopes=scopes,
        key_id=key_id,
        device_id=device_id,
        view=Binding.from_json(row.get("view")),
    )


class DeviceRemoved(Unauthenticated):
    """A revoked device token: 401, and ``reportDeviceRemoved`` stays idempotent."""

    def __init__(self, device_id: str, tenant_id: str) -> None:
        super().__init__("this device was removed; register it again")
        self.device_id, self.tenant_id = device_id, tenant_id
