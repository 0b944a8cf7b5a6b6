"""Generated input types (per entity: input, batch, change, push; then SyncInput and
PushInput) and the one conversion of each request input into what the engine takes.

An argument reaches a resolver in one of two forms: Strawberry input objects, or the raw
variable the bulk-input accelerator kept (already checked against the type). ``to_wire``
turns the first into the second — camelCase keys, omitted fields left out (so an update
keeps them), explicit nulls kept (so they clear) — and one converter per input reads that
wire form (``sync_batches``, ``push_request``)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import strawberry
from strawberry.types.arguments import InputContext

from app.engine.read.changes import parse_checkpoint
from app.engine.registry import EntitySpec, ObjectShape
from app.engine.values import camel
from app.engine.write.push import KINDS, Change, EntityPush, PushRequest
from app.engine.write.sync import Batch
from app.graphql.names import with_entities
from app.graphql.reports import ConflictPolicy
from app.graphql.scalars import parse_datetime
from app.graphql.types import PY_TYPES, article

# --- the wire form ---------------------------------------------------------------------


@lru_cache(maxsize=512)
def wire_name(name: str) -> str:
    return camel(name)


def to_wire(value: Any) -> Any:
    """A Strawberry input value in the form a client sends it (see the module docstring);
    enum values become their names, like in a JSON variable."""
    if hasattr(value, "__dataclass_fields__"):
        out: dict[str, Any] = {}
        for name in value.__dataclass_fields__:
            field = getattr(value, name)
            if field is not strawberry.UNSET:
                out[wire_name(name)] = to_wire(field)
        return out
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _datetime(value: Any) -> datetime | None:
    """A DateTime from the wire: already parsed (from an input object) or the raw string."""
    if value is None or isinstance(value, datetime):
        return value
    return parse_datetime(value)


def sync_batches(wire: dict[str, Any], plurals: dict[str, EntitySpec]) -> dict[str, Batch]:
    """SyncInput -> the engine's batches, in the order the request gave them."""
    by_wire = {wire_name(p): p for p in plurals}
    return {
        by_wire[key]: Batch(data=batch["data"], clean_sync=bool(batch.get("cleanSync")))
        for key, batch in wire.items()
        if batch is not None
    }


def push_request(wire: dict[str, Any], plurals: dict[str, EntitySpec]) -> PushRequest:
    """PushInput -> the engine's push request."""
    entities: dict[str, EntityPush] = {}
    for plural in plurals:
        pushed = wire.get(wire_name(plural))
        if pushed is not None:
            entities[plural] = EntityPush(
                **{kind: [_change(c) for c in pushed.get(kind) or []] for kind in KINDS}
            )
    return PushRequest(
        entities=entities,
        since=parse_checkpoint(wire.get("since")),
        from_date=_datetime(wire.get("fromDate")),
        atomic=bool(wire.get("atomic")),
        policy=wire.get("conflictPolicy") or ConflictPolicy.REJECT.value,
    )


def _change(change: dict[str, Any]) -> Change:
    return Change(
        id=str(change["id"]),
        base_version=change.get("baseVersion"),
        changed_at=_datetime(change.get("changedAt")),
        actor=change.get("actor"),
        data=change.get("data"),
    )


# --- the generated input types -----------------------------------------------------------


class InputTypes:
    """Builds and caches the input types of a registry's entities."""

    def __init__(self) -> None:
        self.shapes: dict[str, type] = {}

    def shape_input(self, shape: ObjectShape) -> type:
        if shape.type_name not in self.shapes:
            inp = type(
                f"{shape.type_name}Input",
                (),
                {
                    "__annotations__": dict.fromkeys(shape.fields, bool | None),
                    **dict.fromkeys(shape.fields, strawberry.UNSET),
                },
            )
            self.shapes[shape.type_name] = strawberry.input(
                inp, description="Omitted flags are false."
            )
        return self.shapes[shape.type_name]

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
                annotations[f.name] = self.shape_input(f.shape) | None
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
    parts = [f"{article(spec.name)} {spec.name} to insert or update (matched by id, else alias)."]
    return " ".join(
        parts
        + [f"Values — {'; '.join(enums)}."] * bool(enums)
        + [f"{'; '.join(refs)}."] * bool(refs)
    )


def batch_type(spec: EntitySpec, input_type: type) -> type:
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


def change_type(spec: EntitySpec, input_type: type) -> type:
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


def push_type(spec: EntitySpec, change: type) -> type:
    annotations = dict.fromkeys(("inserted", "updated", "deleted"), list[change] | None)  # type: ignore[valid-type]
    cls = type(
        f"{spec.name}Push",
        (),
        {"__annotations__": annotations, **dict.fromkeys(annotations)},
    )
    return strawberry.input(cls, description=f"Local changes of {spec.plural}.")


def sync_input_type(batches: dict[str, type]) -> type:
    """``batches``: plural -> that entity's Batch type, in registry order."""
    annotations = {p: batch | None for p, batch in batches.items()}
    cls = type("SyncInput", (), {"__annotations__": annotations, **dict.fromkeys(annotations)})
    return sparse(strawberry.input(cls, description="Batches to upsert, one per entity."))


def push_input_type(pushes: dict[str, type]) -> type:
    """``pushes``: plural -> that entity's Push type, in registry order."""
    annotations: dict[str, Any] = {
        "since": str | None,
        "from_date": datetime | None,
        "atomic": bool | None,
        "conflict_policy": ConflictPolicy | None,
    }
    per_entity = {p: push | None for p, push in pushes.items()}
    annotations = with_entities("PushInput", annotations, per_entity)
    defaults = {"atomic": False, "conflict_policy": ConflictPolicy.REJECT}
    cls = type(
        "PushInput",
        (),
        {"__annotations__": annotations, **dict.fromkeys(annotations), **defaults},
    )
    return sparse(
        strawberry.input(
            cls,
            description="Local changes to apply. The base of conflict detection is each "
            "change's baseVersion, else since (a checkpoint) or fromDate.",
        )
    )


def sparse(cls: type) -> type:
    """Builds ``cls`` from an input value with its null fields set at once.

    A bulk input has a field per entity and a request names one or two; graphql-core fills
    the others with their default (null), and Strawberry would resolve each one's type
    before finding the null (about 80 µs of a one-record write, measured in process). Fields with a
    value are converted as Strawberry converts them; an omitted field keeps its default."""
    definition = cls.__strawberry_definition__  # type: ignore[attr-defined]
    fields: list[tuple[str, str, Any]] = []

    def from_input(type_: type, value: Mapping[str, Any], context: InputContext) -> Any:
        if not fields:  # the names need the schema's config: known at the first call
            name_of = context.config.name_converter.from_field
            fields.extend((f.python_name, name_of(f), f) for f in definition.fields)
        kwargs: dict[str, Any] = {}
        for python_name, name, field in fields:
            if name not in value:
                continue
            item = value[name]
            if item is not None:
                item = context.convert(item, field.resolve_type(type_definition=definition), name)
            kwargs[python_name] = item
        return type_(**kwargs)

    definition.from_input = from_input
    return cls
