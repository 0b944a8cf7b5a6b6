"""Reading a resolver's own selection set, so that pulls read only what was asked for."""

from __future__ import annotations

from collections.abc import Iterator

from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

from app.engine.registry import EntitySpec
from app.engine.values import camel

SYNC_FIELDS = {
    "id": "id",
    "alias": "alias",
    "version": "version",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
}


def fields(selections: list[Selection]) -> Iterator[SelectedField]:
    """Selected fields, looking through fragments."""
    for sel in selections:
        if isinstance(sel, SelectedField):
            yield sel
        elif isinstance(sel, FragmentSpread | InlineFragment):
            yield from fields(sel.selections)


def entity_columns(spec: EntitySpec, selections: list[Selection]) -> set[str]:
    """Columns needed to answer a selection on the entity's object type."""
    by_name = dict(SYNC_FIELDS)
    by_name.update({camel(f.name): f.name for f in spec.fields})
    for ref in spec.refs:
        by_name[camel(ref.name)] = ref.column
        by_name[camel(ref.column)] = ref.column
    return {by_name[f.name] for f in fields(selections) if f.name in by_name}


def changes_selection(
    plurals: dict[str, EntitySpec], selections: list[Selection]
) -> dict[str, set[str]]:
    """For a ChangeSet selection: entity collection -> columns to read."""
    wanted: dict[str, set[str]] = {}
    for f in fields(selections):
        spec = plurals.get(f.name)
        if spec is None:
            continue
        columns = wanted.setdefault(spec.plural, set())
        for part in fields(f.selections):
            if part.name in ("inserted", "updated"):
                columns |= entity_columns(spec, part.selections)
    return wanted
