"""Generated object types: per entity the record type (raw reference keys plus related
objects through DataLoaders), its changes and its connection; then the ChangeSet and the
SyncReport, which hold one field per entity."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

import strawberry

from app.engine.registry import EntitySpec, FieldSpec, ObjectShape, Ref
from app.graphql.loaders import loader_for
from app.graphql.names import with_entities
from app.graphql.reports import SyncCounts

PY_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "date": date,
    "datetime": datetime,
    "strlist": list[str],
}


def article(word: str) -> str:
    return "An" if word[0] in "AEIOU" else "A"


class ObjectTypes:
    """Builds and caches the object types of a registry's entities, in dependency order
    (a record type refers to the types of the entities it references)."""

    def __init__(self) -> None:
        self.enums: dict[type[enum.Enum], Any] = {}
        self.shapes: dict[str, type] = {}
        self.objects: dict[str, type] = {}

    def enum_type(self, py_enum: type[enum.Enum]) -> Any:
        if py_enum not in self.enums:
            self.enums[py_enum] = strawberry.enum(py_enum)
        return self.enums[py_enum]

    def shape_type(self, shape: ObjectShape) -> type:
        if shape.type_name not in self.shapes:
            out = type(shape.type_name, (), {"__annotations__": dict.fromkeys(shape.fields, bool)})
            self.shapes[shape.type_name] = strawberry.type(
                out, description=f"{shape.type_name}: flags, false when unset"
            )
        return self.shapes[shape.type_name]

    def field_type(self, f: FieldSpec) -> Any:
        if f.kind == "enum":
            assert f.enum is not None
            return self.enum_type(f.enum)
        if f.kind == "object":
            assert f.shape is not None
            return self.shape_type(f.shape)
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
            annotations[ref.column], namespace[ref.name] = self._reference(ref)
        cls = type(spec.name, (), {"__annotations__": annotations, **namespace})
        obj = strawberry.type(cls, description=f"{article(spec.name)} {spec.name} record.")
        self.objects[spec.name] = obj
        return obj

    def _reference(self, ref: Ref) -> tuple[Any, Any]:
        """The raw key field's type, and the field of the related object(s)."""
        target = self.objects[ref.target]
        if ref.many:
            field = strawberry.field(
                resolver=_many_resolver(ref),
                graphql_type=list[target],  # type: ignore[valid-type]
            )
            return list[strawberry.ID], field
        return strawberry.ID | None, strawberry.field(
            resolver=_one_resolver(ref), graphql_type=target | None
        )


def _shape_resolver(column: str, out_type: type) -> Any:
    def resolve(root: Any) -> Any:
        value = getattr(root, column, None)
        return out_type(**value) if value is not None else None

    return resolve


def _one_resolver(ref: Ref) -> Any:
    """The related record, or null when it is deleted or (through a view) not visible."""

    async def resolve(root: Any, info: strawberry.Info) -> Any:
        key = getattr(root, ref.column, None)
        if key is None:
            return None
        return await loader_for(info, ref.target).load(key)

    return resolve


def _many_resolver(ref: Ref) -> Any:
    """The related records in key order; the list holds no nulls, so a deleted or (through a
    view) invisible record is left out (the raw key list keeps it)."""

    async def resolve(root: Any, info: strawberry.Info) -> Any:
        keys = getattr(root, ref.column, None) or []
        rows = await loader_for(info, ref.target).load_many(keys)
        return [r for r in rows if r is not None]

    return resolve


def changes_type(spec: EntitySpec, obj: type) -> type:
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


def connection_type(spec: EntitySpec, obj: type) -> type:
    """A page of a list query; ``totalCount`` is read only when selected (``root.count``)."""

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


@strawberry.enum(description="Why a checkpoint cannot be continued from.")
class FullSyncReason(enum.Enum):
    TOMBSTONES_PURGED = "TOMBSTONES_PURGED"
    CHECKPOINT_AHEAD = "CHECKPOINT_AHEAD"
    VIEW_CHANGED = "VIEW_CHANGED"


def entity_digest_type(entity_enum: Any) -> type:
    cls = type(
        "EntityDigest",
        (),
        {"__annotations__": {"entity": entity_enum, "count": int, "checksum": str}},
    )
    return strawberry.type(
        cls,
        description="The live records visible at a final checkpoint: their count and the sum, "
        'mod 2^32, of the first 4 bytes of SHA-256("<id>:<version>"), as 8 hex digits.',
    )


def change_set_type(changes: dict[str, type], entity_digest: type) -> type:
    """``changes``: plural -> that entity's Changes type, in registry order."""
    annotations: dict[str, Any] = {
        "checkpoint": str,
        "has_more": bool,
        "full_sync_required": bool,
        "full_sync_reason": FullSyncReason | None,
        "server_time": datetime,
        "digest": list[entity_digest] | None,  # type: ignore[valid-type]
    }
    annotations = with_entities("ChangeSet", annotations, changes)
    defaults = {"full_sync_reason": None, "digest": None}
    cls = type("ChangeSet", (), {"__annotations__": annotations, **defaults})
    return strawberry.type(cls, description="One page of the delta feed.")


def sync_report_type(plurals: list[str], entity_result: type) -> type:
    own: dict[str, Any] = {"checkpoint": str, "dry_run": bool, "totals": SyncCounts}
    annotations = with_entities("SyncReport", own, {p: entity_result | None for p in plurals})
    cls = type("SyncReport", (), {"__annotations__": annotations, **dict.fromkeys(plurals)})
    return strawberry.type(cls)
