# No "from __future__ import annotations": resolver annotations name generated types.
"""Subscriptions: the engine streams pages (``subscribe_changes``, ``subscribe_actions``);
the resolvers check the credentials, read the arguments and adapt each page to its type."""

from collections.abc import AsyncGenerator
from typing import Any

import strawberry

from app.accel.fastpath import share_event
from app.auth import Principal
from app.engine.live.action_tail import subscribe_actions
from app.engine.live.cohorts import Credential, subscribe_view_changes
from app.engine.live.hub import subscribe_changes
from app.engine.read.changes import ChangePage
from app.engine.registry import EntitySpec
from app.engine.views.pull import Since, parse_since
from app.engine.views.spec import binding_identity
from app.graphql.actions import ActionPageType, action_page, parse_cursor
from app.graphql.catalog import Catalog
from app.graphql.changes import change_set_of
from app.graphql.context import require
from app.graphql.selection import changes_selection


def changes_subscription(catalog: Catalog) -> Any:
    change_set = catalog.change_set

    async def changes(
        info: strawberry.Info,
        since: str | None = None,
        entities: list[catalog.entity_enum] | None = None,  # type: ignore[name-defined]
    ) -> AsyncGenerator[change_set, None]:  # type: ignore[valid-type]
        principal = require(info, "sync:read")
        stream = _stream(info, principal, _wanted(catalog, info, entities), parse_since(since))
        try:
            async for page in stream:
                # a live page is one object for every current subscriber of these entities:
                # so is its ChangeSet, whose executions are shared (fastpath.share_event)
                event = page.shared.get(change_set)
                if event is None:
                    event = page.shared[change_set] = share_event(change_set_of(catalog, page))
                yield event
        finally:
            await stream.aclose()

    return strawberry.subscription(
        resolver=changes,
        description="Catch-up pages from `since` until current (the first emission comes at "
        "once, even empty), then one ChangeSet per commit touching the selected entities; "
        "through a view, one whenever a commit changed what the client holds (records in "
        "and out of the view). Ends after a ChangeSet that asks for a full sync from null "
        "(fullSyncReason VIEW_CHANGED; through a view, any reason).",
    )


def _stream(
    info: strawberry.Info, principal: Principal, entities: list[EntitySpec], since: Since
) -> AsyncGenerator[ChangePage, None]:
    """The subscriber's pages: through its credential's view, or the whole tenant's."""
    hubs = info.context.state.hubs
    if principal.view is None:
        return subscribe_changes(hubs, principal.tenant_id, entities=entities, since=since)
    return subscribe_view_changes(
        hubs,
        principal.tenant_id,
        binding=principal.view,
        credential=Credential(principal.key_id, principal.device_id),
        entities=entities,
        since=since,
    )


def _wanted(
    catalog: Catalog, info: strawberry.Info, entities: list[Any] | None
) -> list[EntitySpec]:
    """The entities a subscriber asked for: the ``entities`` argument, else its selection."""
    if entities:
        names = {e.value for e in entities}
        return [s for s in catalog.registry.ordered() if s.enum_name in names]
    selected = changes_selection(catalog.plurals, info.selected_fields[0].selections)
    return [s for s in catalog.registry.ordered() if s.plural in selected]


async def actions_subscription(
    info: strawberry.Info, after: str | None = None, include_own: bool | None = False
) -> AsyncGenerator[ActionPageType, None]:
    """The action log from a cursor: pages until current, then new actions as they land
    (a view-bound credential's: those pushed under the same binding)."""
    principal = require(info, "sync:read")
    state = info.context.state
    stream = subscribe_actions(
        state.action_tails,
        state.broker,
        principal.tenant_id,
        after=parse_cursor(after),
        exclude_device=None if include_own else principal.device_id,
        recheck_seconds=state.settings.recheck_seconds,
        binding=binding_identity(principal.view),
    )
    try:
        async for page in stream:
            # a page from the tail may be the same object for many subscribers: so is its
            # GraphQL object, and its executions are shared (fastpath.share_event)
            event = page.views.get(ActionPageType)
            if event is None:
                event = page.views[ActionPageType] = share_event(action_page(page))
            yield event
    finally:
        await stream.aclose()
