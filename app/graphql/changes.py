# No "from __future__ import annotations": resolver annotations name generated types.
"""``query changes``: one page of the delta feed, reading only the selected entities and
columns."""

from datetime import UTC, datetime
from typing import Any

import strawberry

from app.engine.read.changes import ChangePage
from app.engine.registry import EntitySpec
from app.engine.views.pull import parse_since
from app.graphql.catalog import Catalog
from app.graphql.context import require
from app.graphql.selection import changes_selection, fields
from app.graphql.types import FullSyncReason


def changes_field(catalog: Catalog) -> Any:
    change_set, plurals = catalog.change_set, catalog.plurals
    selection = SelectionOf(plurals)

    async def changes(
        info: strawberry.Info,
        since: str | None = None,
        from_date: datetime | None = None,
        limit: int | None = 1000,
    ) -> change_set:  # type: ignore[valid-type]
        principal = require(info, "sync:read")
        selected, digest = selection(info)
        page = await info.context.state.service.changes(
            principal.tenant_id,
            entities=[plurals[p] for p in plurals if p in selected],
            since=parse_since(since),
            from_date=from_date.astimezone(UTC) if from_date else None,
            limit=1000 if limit is None else limit,
            columns=selected,
            binding=principal.view,
            digest=digest,
        )
        return change_set_of(catalog, page)

    return strawberry.field(
        resolver=changes, description="Changes after a checkpoint (or a date), in order."
    )


class SelectionOf:
    """What a ``changes`` field selects: the columns per collection and whether the digest,
    from the field's nodes in the document. Kept per node, for the 256 most recent (as
    many documents as the fast lane and Strawberry's parser cache keep, whose nodes these
    are: a document they keep is the same objects on every request). The answer depends on
    field names only, never on variables. Read only."""

    def __init__(self, plurals: dict[str, EntitySpec]) -> None:
        self.plurals = plurals
        self.kept: dict[tuple[int, ...], tuple[Any, dict[str, set[str]], bool]] = {}

    def __call__(self, info: strawberry.Info) -> tuple[dict[str, set[str]], bool]:
        nodes = info._raw_info.field_nodes
        key = tuple(map(id, nodes))
        kept = self.kept.pop(key, None)
        if kept is not None and all(a is b for a, b in zip(kept[0], nodes, strict=True)):
            self.kept[key] = kept  # the same objects (an id alone may be reused): most recent
            return kept[1], kept[2]
        selections = info.selected_fields[0].selections
        selected = changes_selection(self.plurals, selections)
        digest = any(f.name == "digest" for f in fields(selections))
        if len(self.kept) >= SELECTIONS_KEPT:
            del self.kept[next(iter(self.kept))]
        self.kept[key] = (list(nodes), selected, digest)
        return selected, digest


SELECTIONS_KEPT = 256


def change_set_of(catalog: Catalog, page: ChangePage) -> Any:
    """The ChangeSet of an engine page: every entity present, empty where the page has none
    (one shared empty value per entity type: nothing changes a page once made)."""
    per_entity = dict(catalog.empty_changes)
    for plural, c in page.entities.items():
        if c:
            per_entity[plural] = catalog.types_of(plural).changes(
                inserted=c.inserted, updated=c.updated, deleted=c.deleted
            )
    digest = None
    if page.digest is not None:
        digest = [
            catalog.entity_digest(
                entity=catalog.entity_enum[catalog.plurals[d.plural].enum_name],
                count=d.count,
                checksum=d.checksum,
            )
            for d in page.digest
        ]
    reason = page.full_sync_reason
    return catalog.change_set(
        checkpoint=page.token or str(page.checkpoint),
        has_more=page.has_more,
        full_sync_required=page.full_sync_required,
        full_sync_reason=FullSyncReason[reason] if reason else None,
        server_time=page.server_time,
        digest=digest,
        **per_entity,
    )
