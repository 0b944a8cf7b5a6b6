# No "from __future__ import annotations": resolver annotations name generated types.
"""Subscriptions: live changes through the per-tenant hubs, and the action log."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import strawberry

from app.accel.fastpath import share_event
from app.engine.changes import parse_checkpoint
from app.engine.hub import subscribe_changes
from app.graphql.actions import ActionPage, action_page, parse_cursor
from app.graphql.context import require
from app.graphql.selection import changes_selection


def changes_subscription(builder: Any, change_set: type) -> Any:
    async def changes(
        info: strawberry.Info,
        since: str | None = None,
        entities: list[builder.entity_enum] | None = None,
    ) -> AsyncGenerator[change_set, None]:  # type: ignore[valid-type]
        principal = require(info, "sync:read")
        if entities:
            names = {e.value for e in entities}
            wanted = [s for s in builder.registry.ordered() if s.enum_name in names]
        else:
            selected = changes_selection(builder.plurals, info.selected_fields[0].selections)
            wanted = [s for s in builder.registry.ordered() if s.plural in selected]
        state = info.context.state
        stream = subscribe_changes(
            state.hubs, principal.tenant_id, entities=wanted, since=parse_checkpoint(since)
        )
        try:
            async for page in stream:
                # a live page is one object for every current subscriber of these entities:
                # so is its ChangeSet, whose executions are shared (fastpath.share_event)
                event = page.shared.get(change_set)
                if event is None:
                    event = builder.change_set_obj(change_set, page)
                    page.shared[change_set] = share_event(event)
                yield event
        finally:
            await stream.aclose()

    return strawberry.subscription(
        resolver=changes,
        description="Catch-up pages from `since` until current (the first emission comes at "
        "once, even empty), then one ChangeSet per commit touching the selected entities.",
    )


async def actions_subscription(
    info: strawberry.Info, after: str | None = None, include_own: bool | None = False
) -> AsyncGenerator[ActionPage, None]:
    """The action log from a cursor: pages until current, then new actions as they land."""
    principal = require(info, "sync:read")
    state = info.context.state
    wake = asyncio.Event()
    notified: list[int] = []

    def on_commit(_tenant: str, kind: str, seq: int) -> None:
        if kind == "actions":
            notified[:] = [max([seq, *notified])]
            wake.set()

    unsubscribe = state.broker.subscribe(principal.tenant_id, on_commit)
    leave = state.action_tails.join(principal.tenant_id)
    exclude = None if include_own else principal.device_id
    cursor = parse_cursor(after)
    first = True
    known_top: int | None = None
    try:
        while True:
            # answered from the tenant's in-memory tail when it can be: one read per commit
            # for all of the tenant's subscribers in this process, not one each
            page = await state.action_tails.page(
                principal.tenant_id,
                after=cursor,
                limit=100,
                exclude_device=exclude,
                known_top=known_top,
            )
            cursor = page.cursor
            if first or page.items:
                # a page from the tail may be the same object for many subscribers: so is
                # its GraphQL object, and its executions are shared (fastpath.share_event)
                event = page.views.get(ActionPage)
                if event is None:
                    event = page.views[ActionPage] = share_event(action_page(page))
                yield event
                first = False
            if page.has_more:
                continue
            known_top = None  # a re-check after the timeout reads the counter again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), state.settings.recheck_seconds)
                known_top = notified[0] if notified else None
            wake.clear()
    finally:
        leave()
        unsubscribe()
