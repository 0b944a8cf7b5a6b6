"""The per-device action log: ordered, idempotent, signed.

A push locks its device row, drops what the device already sent (sequence numbers at or
below its last accepted one), checks each action's shape and HMAC, applies the built-in
entity actions through the push engine (last write wins) inside a savepoint so a failing
one leaves nothing behind, and stores the accepted ones. Their positions in the tenant's
log are stamped last, like the change feed's, so readers never skip one.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import Notice, bump, lock_keys
from app.engine.devices.devices import DEVICES
from app.engine.models import Action
from app.engine.registry import Registry
from app.engine.values import ID_RULE, parse_id
from app.engine.views.spec import Binding, binding_identity
from app.engine.write.items import foreign_company
from app.engine.write.push import Change, EntityPush, PushRequest, apply_push
from app.engine.write.rows import lock_scope
from app.engine.write.seq import TENANTS
from app.engine.write.tx import WriteTx
from app.errors import BadRequest, Unauthenticated

ACTIONS = Action.__table__  # type: ignore[attr-defined]
BUILTIN = ("entity.upsert", "entity.delete")
MAX_SEQUENCE = 2**53
TYPE_MAX = 255
"""The length of the ``actions.type`` column."""


@dataclass
class ActionInput:
    sequence_number: int
    encoded_action: str
    integrity: str


@dataclass
class Rejected:
    sequence_number: int
    reason: str


@dataclass
class PushActionsResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    last_sequence_number: int = -1
    action_seq: int = 0

    @property
    def should_do_full_sync(self) -> bool:
        return bool(self.rejected)


def signature(secret: str, sequence_number: int, device_id: str, encoded_action: str) -> str:
    """Lower-case hex HMAC-SHA512, keyed with the secret's UTF-8 bytes, of
    ``str(sequenceNumber) + deviceId + encodedAction``."""
    message = f"{sequence_number}{device_id}{encoded_action}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha512).hexdigest()


def check_request(actions: list[ActionInput], *, max_actions: int) -> None:
    """Request-level rules: nothing is stored when these fail."""
    if len(actions) > max_actions:
        raise BadRequest(f"{len(actions)} actions, the limit is {max_actions} per push")
    previous = None
    for action in actions:
        if not 0 <= action.sequence_number < MAX_SEQUENCE:
            raise BadRequest(f"sequenceNumber {action.sequence_number} is out of range")
        if previous is not None and action.sequence_number <= previous:
            raise BadRequest("sequence numbers must increase within a push")
        previous = action.sequence_number


async def push_actions(
    tx: WriteTx,
    registry: Registry,
    actions: list[ActionInput],
    *,
    device_id: str,
    unsigned_types: frozenset[str],
    max_bytes: int,
) -> PushActionsResult:
    """Store a device's new actions (placeholders: the edge stamps ``tx.actions`` of them)
    and apply the entity ones through the push policy, last write wins. Each is stored with
    the device's binding as its locked row says (``binding_identity``), not as a credential
    cache may still remember it: view-bound readers of the log filter on it."""
    conn, tenant_id = tx.conn, tx.tenant_id
    device = await _lock_device(conn, tenant_id, device_id)
    binding = binding_identity(Binding.from_json(device["view"]))
    # The clock is read under the device lock: a concurrent push of the same device that
    # waited for the lock then gets a later time, so its entity actions are not judged
    # older (last write wins) than the ones this device queued before them.
    tx.now = now = datetime.now(UTC)
    result = PushActionsResult(last_sequence_number=int(device["last_sequence"]))
    rows: list[dict[str, Any]] = []
    decoded = [
        _decode(action, device, unsigned_types, max_bytes)
        if action.sequence_number > result.last_sequence_number
        else (None, None)
        for action in actions
    ]
    await _lock_entity_keys(conn, registry, tenant_id, [p for p, _ in decoded if p])
    for action, (payload, reason) in zip(actions, decoded, strict=True):
        if action.sequence_number <= result.last_sequence_number:
            result.duplicates += 1
            continue
        if payload is not None and payload["type"] in BUILTIN:
            reason = await _apply_builtin(tx, registry, payload, device_id)
        if reason is not None or payload is None:
            result.rejected.append(Rejected(action.sequence_number, reason or "rejected"))
            continue
        rows.append(_row(action, payload, tenant_id, device_id, now, -(len(rows) + 1), binding))
        result.last_sequence_number = action.sequence_number
    result.accepted = len(rows)
    if rows:
        await conn.execute(sa.insert(ACTIONS), rows)
        await conn.execute(
            sa.update(DEVICES)
            .where(DEVICES.c.id == device_id)
            .values(last_sequence=result.last_sequence_number)
        )
    return result


async def stamp_actions(conn: AsyncConnection, tenant_id: str, count: int) -> int:
    """Give the transaction's actions their log positions, last before commit, and announce
    the new position to other processes (delivered at commit).

    Taking ``count`` numbers locks the tenant's row until commit. Where the database can,
    the counter, the numbering and the announcement are one statement (``bump``), so the
    lock is held for one round trip and the commit: under load a server's event loop takes
    a while to send each next statement, and every other writer of the tenant queues on the
    lock meanwhile."""
    if count == 0:
        return await action_top(conn, tenant_id)
    params = {"tenant": tenant_id, "count": count}
    notice = Notice(tenant_id, "actions")
    return await bump(
        conn, ACTION_COUNTER, [_numbered], key="actions", params=params, notice=notice
    )


ACTION_COUNTER = (
    sa.update(TENANTS)
    .where(TENANTS.c.id == sa.bindparam("tenant"))
    .values(action_seq=TENANTS.c.action_seq + sa.bindparam("count", type_=sa.BigInteger))
    .returning(TENANTS.c.action_seq)
)
"""Take ``count`` log positions from ``tenant``'s counter; returns the last (built once)."""


def _numbered(top: sa.ColumnElement[Any]) -> sa.Update:
    """The placeholders ``-k`` of the transaction's actions as ``top - count + k``."""
    count = sa.bindparam("count", type_=sa.BigInteger)
    return (
        sa.update(ACTIONS)
        .where(ACTIONS.c.tenant_id == sa.bindparam("tenant"), ACTIONS.c.seq < 0)
        .values(seq=top - count - ACTIONS.c.seq)
    )


async def action_top(conn: AsyncConnection, tenant_id: str) -> int:
    top = (
        await conn.execute(sa.select(TENANTS.c.action_seq).where(TENANTS.c.id == tenant_id))
    ).scalar_one_or_none()
    return int(top or 0)


async def _lock_device(conn: AsyncConnection, tenant_id: str, device_id: str) -> dict[str, Any]:
    # FOR UPDATE where the database has row locks (SQLAlchemy renders nothing for SQLite,
    # whose write transaction holds the whole file)
    query = (
        sa.select(DEVICES)
        .where(DEVICES.c.id == device_id, DEVICES.c.tenant_id == tenant_id)
        .with_for_update()
    )
    row = (await conn.execute(query)).one_or_none()
    if row is None or row.removed_at is not None:
        raise Unauthenticated("this device was removed")
    return dict(row._mapping)


def _decode(
    action: ActionInput, device: dict[str, Any], unsigned: frozenset[str], max_bytes: int
) -> tuple[dict[str, Any] | None, str | None]:
    """The action's payload, or why it is rejected."""
    size = _utf8_size(action.encoded_action)
    if size is None:
        return None, "encodedAction is not valid Unicode (a lone surrogate)"
    if size > max_bytes:
        return None, f"encodedAction is over {max_bytes} bytes"
    try:
        payload = orjson.loads(action.encoded_action)
    except orjson.JSONDecodeError:
        return None, "encodedAction is not JSON"
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return None, "encodedAction must be a JSON object with a string type"
    if len(payload["type"]) > TYPE_MAX:
        return None, f"type is over {TYPE_MAX} characters"
    if action.integrity == "":
        if payload["type"] in unsigned:
            return payload, None
        return None, f"actions of type {payload['type']!r} must be signed"
    expected = signature(
        device["secret"], action.sequence_number, device["id"], action.encoded_action
    )
    # compare_digest refuses non-ASCII str (TypeError); such a value is no hex digest anyway
    if not action.integrity.isascii() or not hmac.compare_digest(expected, action.integrity):
        return None, "integrity check failed"
    return payload, None


def _utf8_size(text: str) -> int | None:
    """Bytes in UTF-8; None for a lone surrogate (a JSON ``\\ud800`` escape in the request)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return None


async def _apply_builtin(
    tx: WriteTx, registry: Registry, payload: dict[str, Any], device_id: str
) -> str | None:
    """Apply an entity action (last write wins) in a savepoint; the reason if it fails."""
    request, reason = _as_push(registry, payload, tenant_id=tx.tenant_id, device_id=device_id)
    if request is None:
        return reason
    async with tx.conn.begin_nested() as savepoint:
        result = await apply_push(tx, registry, request)
        failure = _failure(result)
        if failure is not None:
            await savepoint.rollback()
        return failure


async def _lock_entity_keys(
    conn: AsyncConnection, registry: Registry, tenant_id: str, payloads: list[dict[str, Any]]
) -> None:
    """Lock what the entity actions will write before applying any, entity by entity in the
    registry's order like every other writer: applied in the device's order, they would lock
    one entity then another that a concurrent sync locks the other way round (a deadlock)."""
    keys: dict[str, list[str]] = {}
    for payload in payloads:
        if payload.get("type") not in BUILTIN:
            continue
        spec = registry.by_any_name(str(payload.get("entity", "")))
        data = payload.get("data")
        id_ = parse_id(data.get("id") if isinstance(data, dict) else payload.get("id"))
        if spec is None or id_ is None:
            continue
        wanted = keys.setdefault(spec.plural, [])
        wanted.append(f"i:{id_}")
        alias = data.get("alias") if isinstance(data, dict) else None
        if isinstance(alias, str) and alias:
            wanted.append(f"a:{alias}")
    for spec in registry.ordered():
        if spec.plural in keys:
            await lock_keys(conn, lock_scope(spec, tenant_id), keys[spec.plural])


def _failure(result: Any) -> str | None:
    if result.errors:
        e = result.errors[0]
        return f"{e.code}: {e.message}"
    for c in result.conflicts:
        if c.reason == "NOT_FOUND":
            return f"NOT_FOUND: no {c.entity} {c.id}"
    return None  # a change that lost to a newer one (last write wins) is still logged


def _as_push(
    registry: Registry, payload: dict[str, Any], *, tenant_id: str, device_id: str
) -> tuple[PushRequest | None, str | None]:
    spec = registry.by_any_name(str(payload.get("entity", "")))
    if spec is None:
        return None, f"unknown entity {payload.get('entity')!r}"
    changed_at, reason = _changed_at(payload.get("changedAt"))
    if reason is not None:
        return None, reason
    if payload["type"] == "entity.delete":
        if parse_id(payload.get("id")) is None:
            return None, f"entity.delete needs the record's id ({ID_RULE})"
        change = Change(id=payload["id"], changed_at=changed_at, actor=device_id)
        return PushRequest(
            {spec.plural: EntityPush(deleted=[change])}, policy="LAST_WRITE_WINS"
        ), None
    data = payload.get("data")
    if not isinstance(data, dict):
        return None, "entity.upsert needs data (an object)"
    if parse_id(data.get("id")) is None:
        return None, f"entity.upsert needs data.id ({ID_RULE})"
    guid = data.get("companyGuid") if spec.company_guid else None
    if foreign_company(guid, tenant_id):
        return None, f"FORBIDDEN: companyGuid {str(guid)[:64]!r} is not the caller's company"
    change = Change(id=data["id"], changed_at=changed_at, actor=device_id, data=data)
    return PushRequest({spec.plural: EntityPush(inserted=[change])}, policy="LAST_WRITE_WINS"), None


def _changed_at(value: Any) -> tuple[datetime | None, str | None]:
    """The action's ``changedAt`` in UTC (None: the server's now), or why it is unusable
    (a time the database cannot store must not fail the whole push)."""
    if value is None:
        return None, None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC), None
        except (ValueError, OverflowError):
            pass
    return None, f"changedAt {str(value)[:64]!r} is not an ISO 8601 date-time"


def _row(
    action: ActionInput,
    payload: dict[str, Any],
    tenant_id: str,
    device_id: str,
    now: datetime,
    placeholder: int,
    binding: str | None,
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "device_id": device_id,
        "sequence_number": action.sequence_number,
        "type": payload["type"],
        "payload": payload,
        "received_at": now,
        "seq": placeholder,
        "binding": binding,
    }


@dataclass
class ActionPage:
    items: list[Any]
    cursor: int | None
    has_more: bool
    shared: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)
    """By action position: what a transport builds from an action that many live
    subscribers receive (``ActionTail.shared``); empty for a page of its own."""
    views: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """What transports build from this page, when many subscribers receive it."""


async def read_actions(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    after: int | None,
    limit: int,
    exclude_device: str | None,
    binding: str | None = None,
) -> ActionPage:
    """The tenant's actions after a position, in order (bounded by the counter read first,
    so a page never skips an action that commits later with a lower position); with
    ``binding`` (a ``binding_identity``), only the actions stored with it."""
    top = await action_top(conn, tenant_id)
    conds = [ACTIONS.c.tenant_id == tenant_id, ACTIONS.c.seq > (after or 0), ACTIONS.c.seq <= top]
    if exclude_device is not None:
        conds.append(ACTIONS.c.device_id != exclude_device)
    if binding is not None:
        conds.append(ACTIONS.c.binding == binding)
    rows = (
        await conn.execute(
            sa.select(ACTIONS).where(*conds).order_by(ACTIONS.c.seq).limit(limit + 1)
        )
    ).all()
    items = list(rows[:limit])
    has_more = len(rows) > limit
    cursor = items[-1].seq if has_more else max(top, after or 0)
    return ActionPage(items=items, cursor=cursor, has_more=has_more)
