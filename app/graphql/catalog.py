"""The types phase of the schema: every generated type of a frozen registry, built once and
handed to the resolver modules, which only read it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from app.engine.registry import EntitySpec, Registry
from app.engine.write.items import ItemError
from app.graphql import inputs, types
from app.graphql.reports import (
    conflict_type,
    entity_enum,
    entity_sync_result_type,
    item_error_type,
    push_report_type,
)


@dataclass(frozen=True)
class EntityTypes:
    spec: EntitySpec
    object: type
    input: type
    batch: type
    changes: type
    connection: type
    change: type
    push: type


@dataclass(frozen=True)
class Catalog:
    registry: Registry
    entities: list[EntityTypes]
    plurals: dict[str, EntitySpec]
    entity_enum: Any
    item_error: type
    entity_result: type
    conflict: type
    push_report: type
    change_set: type
    entity_digest: type
    sync_report: type
    sync_input: type
    push_input: type

    @functools.cached_property
    def empty_changes(self) -> dict[str, Any]:
        """Each entity's empty ``…Changes`` value, by collection name (shared: read only)."""
        return {
            t.spec.plural: t.changes(inserted=[], updated=[], deleted=[]) for t in self.entities
        }

    def types_of(self, plural: str) -> EntityTypes:
        return self._types_by_plural[plural]

    @functools.cached_property
    def _types_by_plural(self) -> dict[str, EntityTypes]:
        return {t.spec.plural: t for t in self.entities}

    def spec_of(self, entity: Any) -> EntitySpec:
        """The entity named by a value of the ``Entity`` enum."""
        return next(s for s in self.registry.ordered() if s.enum_name == entity.value)

    def item_error_of(self, e: ItemError) -> Any:
        return self.item_error(
            entity=self.registry.entities[e.entity].enum_name,
            index=e.index,
            id=e.id,
            alias=e.alias,
            field=e.field,
            code=e.code,
            message=e.message,
        )


def entity_types(
    spec: EntitySpec, objects: types.ObjectTypes, ins: inputs.InputTypes
) -> EntityTypes:
    obj = objects.object_type(spec)
    inp = ins.input_type(spec)
    change = inputs.change_type(spec, inp)
    return EntityTypes(
        spec=spec,
        object=obj,
        input=inp,
        batch=inputs.batch_type(spec, inp),
        changes=types.changes_type(spec, obj),
        connection=types.connection_type(spec, obj),
        change=change,
        push=inputs.push_type(spec, change),
    )


def build_catalog(registry: Registry) -> Catalog:
    objects, ins = types.ObjectTypes(), inputs.InputTypes()
    entities = [entity_types(s, objects, ins) for s in registry.ordered()]
    enum_type = entity_enum([s.enum_name for s in registry.ordered()])
    item_error = item_error_type(enum_type)
    entity_result = entity_sync_result_type(item_error)
    conflict = conflict_type(enum_type)
    entity_digest = types.entity_digest_type(enum_type)
    return Catalog(
        registry=registry,
        entities=entities,
        plurals={s.plural: s for s in registry.ordered()},
        entity_enum=enum_type,
        item_error=item_error,
        entity_result=entity_result,
        conflict=conflict,
        push_report=push_report_type(conflict, item_error),
        change_set=types.change_set_type(
            {t.spec.plural: t.changes for t in entities}, entity_digest
        ),
        entity_digest=entity_digest,
        sync_report=types.sync_report_type([t.spec.plural for t in entities], entity_result),
        sync_input=inputs.sync_input_type({t.spec.plural: t.batch for t in entities}),
        push_input=inputs.push_input_type({t.spec.plural: t.push for t in entities}),
    )
