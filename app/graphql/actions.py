"""Devices and the action log over GraphQL."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry import UNSET
from strawberry.scalars import JSON

from app.auth import DeviceRemoved
from app.engine.devices.actions import ActionInput, ActionPage
from app.engine.read.changes import parse_counter
from app.engine.values import parse_uuid
from app.errors import BadRequest, Forbidden
from app.graphql.bindings import ViewInput, checked, device_binding
from app.graphql.context import require, require_key


@strawberry.type(description="Shown once: keep the token (a credential) and the secret.")
class DeviceRegistration:
    device_id: strawberry.ID
    token: str
    secret: str


@strawberry.input(
    name="ActionInput", description="One queued action, signed with the device secret."
)
class ActionInputType:
    """The GraphQL face of ``app.engine.devices.actions.ActionInput``."""

    sequence_number: int
    encoded_action: str
    integrity: str


@strawberry.type
class RejectedAction:
    sequence_number: int
    reason: str


@strawberry.type(name="PushActionsResult")
class PushActionsResultType:
    """The GraphQL face of ``app.engine.devices.actions.PushActionsResult``."""

    should_do_full_sync: bool
    accepted: int
    duplicates: int
    rejected: list[RejectedAction]
    last_sequence_number: int


@strawberry.type(name="Action")
class ActionType:
    """One logged action (a row of ``app.engine.models.Action``)."""

    id: strawberry.ID
    device_id: strawberry.ID
    sequence_number: int
    type: str
    payload: JSON
    received_at: datetime
    cursor: str


@strawberry.type(name="ActionPage")
class ActionPageType:
    """The GraphQL face of ``app.engine.devices.actions.ActionPage``."""

    items: list[ActionType]
    cursor: str | None
    has_more: bool


def parse_cursor(value: str | None) -> int | None:
    return parse_counter(value, "cursor")


def action_page(page: ActionPage) -> ActionPageType:
    shared = page.shared  # one object per action for every live subscriber receiving it
    items = []
    for row in page.items:
        item = shared.get(row.seq)
        if item is None:
            item = ActionType(
                id=strawberry.ID(row.id),
                device_id=strawberry.ID(row.device_id),
                sequence_number=row.sequence_number,
                type=row.type,
                payload=row.payload,
                received_at=row.received_at,
                cursor=str(row.seq),
            )
            if shared is not None:
                shared[row.seq] = item
        items.append(item)
    return ActionPageType(
        items=items,
        cursor=None if page.cursor is None else str(page.cursor),
        has_more=page.has_more,
    )


async def resolve_actions(
    info: strawberry.Info,
    after: str | None = None,
    limit: int | None = 100,
    include_own: bool | None = False,
) -> ActionPageType:
    """The tenant's actions after a cursor, in order; other devices' only unless includeOwn;
    a view-bound credential's: only those pushed under the same binding."""
    principal = require(info, "sync:read")
    exclude = None if include_own else principal.device_id
    page = await info.context.state.service.actions(
        principal.tenant_id,
        after=parse_cursor(after),
        limit=100 if limit is None else limit,
        exclude_device=exclude,
        binding=principal.view,
    )
    return action_page(page)


async def is_device_removed(info: strawberry.Info, token: str) -> bool:
    """True only for a token that was revoked (callable without credentials)."""
    return bool(await info.context.state.service.is_device_removed(token))


async def register_device(
    info: strawberry.Info, name: str, view: ViewInput | None = None
) -> DeviceRegistration:
    """A new device: its token can read and use the action log; its secret signs actions.
    It sees what ``view`` shows (an unbound key's choice; a view-bound key's devices get
    its own binding) or, unbound, the whole tenant."""
    principal = require_key(info, "sync:write")
    state = info.context.state
    binding = device_binding(state.registry, principal, view)
    registration = await state.service.register_device(principal.tenant_id, name, view=binding)
    return DeviceRegistration(
        device_id=strawberry.ID(registration.device_id),
        token=registration.token,
        secret=registration.secret,
    )


async def push_actions(
    info: strawberry.Info, actions: list[ActionInputType]
) -> PushActionsResultType:
    """Store a device's queued actions in order; duplicates are counted and ignored."""
    principal = require(info, "sync:read")
    if principal.device_id is None:
        raise Forbidden("pushActions needs a device token (registerDevice)")
    result = await info.context.state.service.push_actions(
        principal.tenant_id,
        principal.device_id,
        [ActionInput(a.sequence_number, a.encoded_action, a.integrity) for a in actions],
        binding=principal.view,
    )
    return PushActionsResultType(
        should_do_full_sync=result.should_do_full_sync,
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=[
            RejectedAction(sequence_number=r.sequence_number, reason=r.reason)
            for r in result.rejected
        ],
        last_sequence_number=result.last_sequence_number,
    )


async def report_device_removed(info: strawberry.Info) -> bool:
    """The calling device was reset or uninstalled: revoke its token (idempotent)."""
    error = info.context.auth.error
    if isinstance(error, DeviceRemoved):
        return True
    principal = require(info, "sync:read")
    if principal.device_id is None:
        raise Forbidden("reportDeviceRemoved needs a device token")
    return bool(
        await info.context.state.service.remove_device(principal.tenant_id, principal.device_id)
    )


async def remove_device(info: strawberry.Info, device_id: strawberry.ID) -> bool:
    """Revoke a device's token (scope sync:manage); false when there is no such device."""
    principal = require_key(info, "sync:manage")
    return bool(
        await info.context.state.service.remove_device(principal.tenant_id, _uuid(device_id))
    )


async def set_device_view(
    info: strawberry.Info, device_id: strawberry.ID, view: ViewInput | None = UNSET
) -> bool:
    """Bind a device to a view (null: unbind; scope sync:manage); its next pull moves
    records in and out. False when the tenant has no such device."""
    principal = require_key(info, "sync:manage")
    if view is UNSET:  # never unbind by omission
        raise BadRequest("setDeviceView needs view: a view and its params, or null to unbind")
    state = info.context.state
    binding = checked(state.registry, view)
    return await state.service.set_device_view(principal.tenant_id, _uuid(device_id), binding)


def _uuid(device_id: str) -> str:
    canonical = parse_uuid(device_id)
    if canonical is None:
        raise BadRequest(f"deviceId {device_id!r} is not a UUID")
    return canonical
