"""GraphQL types of one entity, generated from its registry spec: the object type (with raw
reference keys and DataLoader-backed related objects), the input type, and the per-entity
shapes of sync, changes and list queries."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import strawberry
from strawberry.types.base import StrawberryOptional

from app.engine.items import camel
from app.engine.registry import EntitySpec, FieldSpec, ObjectShape, Ref
from app.graphql.loaders import loader_for

PY_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "date": date,
    "datetime": datetime,
    "strlist": list[str],
}


@dataclass
class EntityTypes:
    spec: EntitySpec
    object: type
    input: type
    batch: type
    changes: type
    connection: type
    change: type
    push: type


class TypeBuilder:
    """Builds and caches the Strawberry types of every entity of a registry."""

    def __init__(self) -> None:
        self.enums: dict[type[enum.Enum], Any] = {}
        self.shapes: dict[str, tuple[type, type]] = {}
        self.entities: dict[str, EntityTypes] = {}

    def build(self, spec: EntitySpec) -> EntityTypes:
        obj = self.object_type(spec)
        inp = self.input_type(spec)
        change = _change_type(spec, inp)
        types = EntityTypes(
            spec=spec,
            object=obj,
            input=inp,
            batch=_batch_type(spec, inp),
            changes=_changes_type(spec, obj),
            connection=_connection_type(spec, obj),
            change=change,
            push=_push_type(spec, change),
        )
        self.entities[spec.name] = types
        return types

    def enum_type(self, py_enum: type[enum.Enum]) -> Any:
        if py_enum not in self.enums:
            self.enums[py_enum] = strawberry.enum(py_enum)
        return self.enums[py_enum]

    def shape_types(self, shape: ObjectShape) -> tuple[type, type]:
        if shape.type_name not in self.shapes:
            out = type(shape.type_name, (), {"__annotations__": dict.fromkeys(shape.fields, bool)})
            inp = type(
                f"{shape.type_name}Input",
                (),
                {
                    "__annotations__": dict.fromkeys(shape.fields, bool | None),
                    **dict.fromkeys(shape.fields, strawberry.UNSET),
                },
            )
            self.shapes[shape.type_name] = (
                strawberry.type(out, description=f"{shape.type_name}: flags, false when unset"),
                strawberry.input(inp, description="Omitted flags are false."),
            )
        return self.shapes[shape.type_name]

    def field_type(self, f: FieldSpec) -> Any:
        if f.kind == "enum":
            assert f.enum is not None
            return self.enum_type(f.enum)
        if f.kind == "object":
            assert f.shape is not None
            return self.shape_types(f.shape)[0]
        return PY_TYPES[f.kind]

    def object_type(self, spec: EntitySpec) -> type:
        annotations: dict[str, Any] = {
            "id": strawberry.ID,
            "alias": str | None,
            "version": int,
            "created_at": datetime,
            "updated_at": datetime,
        }
        namespace: dict[str, Any] = {}
        for f in spec.fields:
            if f.kind == "object":
                namespace[f.name] = strawberry.field(
                    resolver=_shape_resolver(f.name, self.field_type(f)),
                    graphql_type=self.field_type(f) | None,
                )
            else:
                annotations[f.name] = self.field_type(f) | None
        for ref in spec.refs:
            target = self.entities[ref.target].object
            if ref.many:
                annotations[ref.column] = list[strawberry.ID]
                namespace[ref.name] = strawberry.field(
                    resolver=_many_resolver(ref),
                    graphql_type=list[target],  # type: ignore[valid-type]
                )
            else:
                annotations[ref.column] = strawberry.ID | None
                namespace[ref.name] = strawberry.field(
                    resolver=_one_resolver(ref), graphql_type=target | None
                )
        cls = type(spec.name, (), {"__annotations__": annotations, **namespace})
        return strawberry.type(cls, description=f"{_article(spec.name)} {spec.name} record.")

    def input_type(self, spec: EntitySpec) -> type:
        """Every field optional: on update an omitted field keeps its value, null clears it.
        Enum values travel as strings so that a bad value is an item error, not a failed
        request."""
        annotations: dict[str, Any] = {"id": strawberry.ID | None, "alias": str | None}
        for f in spec.fields:
            if f.kind == "enum":
                annotations[f.name] = str | None
            elif f.kind == "object":
                assert f.shape is not None
                annotations[f.name] = self.shape_types(f.shape)[1] | None
            else:
                annotations[f.name] = PY_TYPES[f.kind] | None
        for ref in spec.refs:
            annotations[ref.name] = list[str] | None if ref.many else str | None
        if spec.company_guid:
            annotations["company_guid"] = str | None
        cls = type(
            f"{spec.name}Input",
            (),
            {"__annotations__": annotations, **dict.fromkeys(annotations, strawberry.UNSET)},
        )
        return strawberry.input(cls, description=_input_doc(spec))


def _input_doc(spec: EntitySpec) -> str:
    enums = [
        f"{camel(f.name)}: {', '.join(m.value for m in f.enum)}" for f in spec.fields if f.enum
    ]
    refs = [f"{camel(r.name)} takes ids or aliases of {r.target}" for r in spec.refs]
    parts = [f"{_article(spec.name)} {spec.name} to insert or update (matched by id, else alias)."]
    return " ".join(
        parts
        + [f"Values — {'; '.join(enums)}."] * bool(enums)
        + [f"{'; '.join(refs)}."] * bool(refs)
    )


def _shape_resolver(column: str, out_type: type) -> Any:
    def resolve(root: Any) -> Any:
        value = getattr(root, column, None)
        return out_type(**value) if value is not None else None

    return resolve


def _one_resolver(ref: Ref) -> Any:
    async def resolve(root: Any, info: strawberry.Info) -> Any:
        key = getattr(root, ref.column, None)
        if key is None:
            return None
        return await loader_for(info, ref.target).load(key)

    return resolve


def _many_resolver(ref: Ref) -> Any:
    async def resolve(root: Any, info: strawberry.Info) -> Any:
        keys = getattr(root, ref.column, None) or []
        rows = await loader_for(info, ref.target).load_many(keys)
        return [r for r in rows if r is not None]

    return resolve


def _batch_type(spec: EntitySpec, input_type: type) -> type:
    cls = type(
        f"{spec.name}Batch",
        (),
        {
            "__annotations__": {"data": list[input_type], "clean_sync": bool | None},  # type: ignore[valid-type]
            "clean_sync": False,
        },
    )
    return strawberry.input(
        cls,
        description=f"{spec.plural} to upsert; cleanSync also deletes the live ones not listed.",
    )


def _changes_type(spec: EntitySpec, obj: type) -> type:
    cls = type(
        f"{spec.name}Changes",
        (),
        {
            "__annotations__": {
                "inserted": list[obj],  # type: ignore[valid-type]
                "updated": list[obj],  # type: ignore[valid-type]
                "deleted": list[strawberry.ID],
            }
        },
    )
    return strawberry.type(cls)


def _connection_type(spec: EntitySpec, obj: type) -> type:
    async def total_count(root: Any, info: strawberry.Info) -> int:
        return int(await root.count())

    cls = type(
        f"{spec.name}Connection",
        (),
        {
            "__annotations__": {
                "nodes": list[obj],  # type: ignore[valid-type]
                "end_cursor": str | None,
                "has_next_page": bool,
            },
            "total_count": strawberry.field(resolver=total_count),
        },
    )
    return strawberry.type(cls)


def is_optional(t: Any) -> bool:
    return isinstance(t, StrawberryOptional)


def _article(word: str) -> str:
    return "An" if word[0] in "AEIOU" else "A"


def _change_type(spec: EntitySpec, input_type: type) -> type:
    cls = type(
        f"{spec.name}Change",
        (),
        {
            "__annotations__": {
                "id": strawberry.ID,
                "base_version": int | None,
                "changed_at": datetime | None,
                "actor": str | None,
                "data": input_type | None,
            },
            "base_version": None,
            "changed_at": None,
            "actor": None,
            "data": None,
        },
    )
    return strawberry.input(
        cls,
        description="One local change: baseVersion is the version it was made from; "
        "changedAt and actor say when and by whom.",
    )


def _push_type(spec: EntitySpec, change: type) -> type:
    annotations = dict.fromkeys(("inserted", "updated", "deleted"), list[change] | None)  # type: ignore[valid-type]
    cls = type(
        f"{spec.name}Push",
        (),
        {"__annotations__": annotations, **dict.fromkeys(annotations)},
    )
    return strawberry.input(cls, description=f"Local changes of {spec.plural}.")
