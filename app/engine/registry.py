"""The entity registry: what each entity is made of, frozen before the schema is built.

A domain module declares a SQLModel table (with the sync fields of ``SyncRow``) and calls
``register``; everything else (validation, the bulk paths, the GraphQL schema) reads the
``EntitySpec`` computed here.
"""

from __future__ import annotations

import enum
import functools
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

import sqlalchemy as sa

from app.db import json_array_index
from app.engine.models import SyncRow
from app.engine.views.spec import RefIs, RefVisible, View

FieldKind = Literal["str", "int", "float", "bool", "date", "datetime", "enum", "strlist", "object"]

SYNC_COLUMNS = frozenset(SyncRow.model_fields)
"""Columns every entity has; not domain fields."""


@dataclass(frozen=True)
class Ref:
    """A reference to another entity.

    To-one ``x`` is stored in column ``x_id``; to-many ``xs`` in ``<singular>_ids`` (JSON)."""

    name: str
    target: str
    many: bool = False
    required: bool = False

    @functools.cached_property
    def column(self) -> str:
        if self.many:
            singular = self.name[:-1] if self.name.endswith("s") else self.name
            return f"{singular}_ids"
        return f"{self.name}_id"


@dataclass(frozen=True)
class ObjectShape:
    """A nested object of booleans stored as JSON (e.g. ``roleSet``)."""

    type_name: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class FieldSpec:
    """One domain field of an entity (references aside)."""

    name: str
    kind: FieldKind
    required: bool = False
    default: Any = None
    enum: type[enum.Enum] | None = None
    shape: ObjectShape | None = None
    max_length: int | None = None


@dataclass
class EntitySpec:
    name: str
    """The GraphQL type name, e.g. ``User``."""
    plural: str
    """The collection name, e.g. ``users``."""
    model: type[SyncRow]
    fields: tuple[FieldSpec, ...]
    refs: tuple[Ref, ...]
    lookup_fields: tuple[str, ...] = ()
    """Extra columns a reference may name this entity by (``email`` for users)."""
    company_guid: bool = False
    """Items may carry ``companyGuid``, which must equal the caller's tenant id."""
    order: int = 0

    @property
    def table(self) -> sa.Table:
        return typing.cast(sa.Table, self.model.__table__)  # type: ignore[attr-defined]

    @property
    def enum_name(self) -> str:
        """``USER``, ``BADGE``: the value in the GraphQL ``Entity`` enum."""
        return self.name.upper()

    def field(self, name: str) -> FieldSpec:
        return next(f for f in self.fields if f.name == name)

    @functools.cached_property
    def data_columns(self) -> tuple[str, ...]:
        """Columns whose values compare for "unchanged": domain fields and references."""
        return tuple(f.name for f in self.fields) + tuple(r.column for r in self.refs)

    @functools.cached_property
    def visible_values(self) -> operator.itemgetter[Any]:
        """Row -> the tuple of what a client sees of it (alias and data columns)."""
        return operator.itemgetter("alias", *self.data_columns)

    @functools.cached_property
    def required_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.required)

    @functools.cached_property
    def fast_normalizer(self) -> Callable[[int, Any], Any] | None:
        """The entity's generated item normalizer (``app/accel/normalizer.py``), or None
        when that accelerator is off: chosen when first used, kept as long as the spec."""
        from app import accel

        if not accel.enabled("normalizer"):
            return None
        from app.accel.normalizer import compile_normalizer

        return compile_normalizer(self)


@dataclass
class Registry:
    entities: dict[str, EntitySpec] = field(default_factory=dict)
    views: dict[str, View] = field(default_factory=dict)
    frozen: bool = False
    modules: dict[str, str] = field(default_factory=dict)
    """``entity Book`` or ``view borrower`` -> the module that registered it: errors name it."""

    def register(self, spec: EntitySpec, *, module: str = "") -> EntitySpec:
        if self.frozen:
            raise RuntimeError(f"register {spec.name}: the registry is frozen; register at import")
        for other in self.entities.values():
            if other.name == spec.name or other.plural == spec.plural:
                first = _in(self.module_of("entity", other.name))
                raise ValueError(
                    f"entity {spec.name}/{spec.plural}{_in(module)} is registered twice: "
                    f"{other.name}/{other.plural}{first} has that name or collection; rename "
                    "one (entity_spec's name= and plural=)"
                )
        self.entities[spec.name] = spec
        self.modules[f"entity {spec.name}"] = module
        return spec

    def register_view(self, view: View, *, module: str = "") -> View:
        if self.frozen:
            raise RuntimeError(f"register view {view.name}: the registry is frozen")
        if view.name in self.views:
            first = self.module_of("view", view.name)
            raise ValueError(
                f"view {view.name!r}{_in(module)} is declared twice"
                + (f", first in {first}" if first else "")
                + ": rename one"
            )
        self.views[view.name] = view
        self.modules[f"view {view.name}"] = module
        return view

    def freeze(self) -> Registry:
        """Check references and views, and compute the dependency order once."""
        if self.frozen:
            return self
        for spec in self.entities.values():
            for ref in spec.refs:
                if ref.target not in self.entities:
                    raise ValueError(
                        f"{spec.name}.{ref.name}{_in(self.module_of('entity', spec.name))} "
                        f"references unknown entity {ref.target!r}: fix the name, or load the "
                        f"module that registers it (the entities are {', '.join(self.entities)})"
                    )
        for position, name in enumerate(_topological(self.entities)):
            self.entities[name].order = position
        self.entities = dict(sorted(self.entities.items(), key=lambda kv: kv[1].order))
        for view in self.views.values():
            try:
                view.bind(self)
            except ValueError as exc:
                raise ValueError(f"{exc}{_in(self.module_of('view', view.name))}") from exc
            for entity, steps in view.steps.items():
                for step in steps:
                    if step.ref is not None and isinstance(step.rule, RefIs | RefVisible):
                        _index_ref(self.entities[entity].table, step.ref)
        self.frozen = True
        return self

    def module_of(self, kind: str, name: str) -> str:
        """The module that registered ``entity Name`` or ``view name`` ("" if not told)."""
        return self.modules.get(f"{kind} {name}", "")

    def ordered(self) -> list[EntitySpec]:
        return list(self.entities.values())

    def by_plural(self, plural: str) -> EntitySpec:
        for spec in self.entities.values():
            if spec.plural == plural:
                return spec
        raise KeyError(plural)

    def by_any_name(self, name: str) -> EntitySpec | None:
        """``badges``, ``BADGE`` or ``Badge``."""
        for spec in self.entities.values():
            if name in (spec.plural, spec.enum_name, spec.name):
                return spec
        return None


def _in(module: str) -> str:
    """`` (in library_sync.models)`` for a message, when the module is known."""
    return f" (in {module})" if module else ""


def _topological(entities: dict[str, EntitySpec]) -> list[str]:
    """Entities in registration order, each moved after the entities it references (a
    depth-first walk: ``graphlib.TopologicalSorter`` groups by depth instead, which would
    reorder the schema's ``Entity`` enum and inputs)."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise ValueError(
                f"reference cycle through {name}: make one of the references optional and "
                "sync it in a second pass, or drop it"
            )
        visiting.add(name)
        for ref in entities[name].refs:
            if ref.target != name:
                visit(ref.target)
        visiting.discard(name)
        done.append(name)

    for name in entities:
        visit(name)
    return done


def entity_spec(
    model: type[SyncRow],
    *,
    name: str,
    plural: str,
    refs: tuple[Ref, ...] = (),
    required: tuple[str, ...] = (),
    shapes: dict[str, ObjectShape] | None = None,
    lookup_fields: tuple[str, ...] = (),
    company_guid: bool = False,
) -> EntitySpec:
    """Build the spec of a SQLModel entity table from its annotations."""
    ref_columns = {r.column for r in refs}
    shapes = shapes or {}
    specs: list[FieldSpec] = []
    for fname, info in model.model_fields.items():
        if fname in SYNC_COLUMNS or fname in ref_columns:
            continue
        kind, enum_type = _kind_of(info.annotation)
        if fname in shapes:
            kind = "object"
        column = model.__table__.c[fname]  # type: ignore[attr-defined]
        max_length = getattr(column.type, "length", None)
        default = info.default if info.default is not None else None
        specs.append(
            FieldSpec(
                name=fname,
                kind=kind,
                required=fname in required,
                default=default,
                enum=enum_type,
                shape=shapes.get(fname),
                max_length=max_length,
            )
        )
    for ref in refs:
        if ref.column not in model.model_fields:
            raise ValueError(f"{name}: reference {ref.name} needs a column {ref.column}")
    _add_indexes(model.__table__, lookup_fields)  # type: ignore[attr-defined]
    return EntitySpec(
        name=name,
        plural=plural,
        model=model,
        fields=tuple(specs),
        refs=refs,
        lookup_fields=lookup_fields,
        company_guid=company_guid,
    )


def _kind_of(annotation: Any) -> tuple[FieldKind, type[enum.Enum] | None]:
    inner = _strip_optional(annotation)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return "enum", inner
    if typing.get_origin(inner) is list:
        return "strlist", None
    if typing.get_origin(inner) is dict:
        return "object", None
    simple: dict[Any, FieldKind] = {
        str: "str",
        int: "int",
        float: "float",
        bool: "bool",
        date: "date",
        datetime: "datetime",
        dict: "object",
    }
    if inner in simple:
        return simple[inner], None
    raise TypeError(f"unsupported field type {annotation!r}")


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _index_ref(table: sa.Table, ref: Ref) -> None:
    """The index a view's rule "reference -> record" reads by: (tenant, column) for a
    to-one reference; for a to-many one (a JSON array) a GIN index on PostgreSQL (SQLite
    scans the tenant's rows)."""
    name = f"ix_{table.name}_tenant_{ref.column}"
    if ref.many:
        name = f"ix_{table.name}_{ref.column}_gin"
    if any(index.name == name for index in table.indexes):
        return
    if ref.many:
        json_array_index(name, table.c[ref.column])
    else:
        sa.Index(name, table.c.tenant_id, table.c[ref.column])


def _add_indexes(table: sa.Table, lookup_fields: tuple[str, ...]) -> None:
    """The indexes every entity needs: the feed, alias lookups, fromDate and lookups."""
    name = table.name
    sa.Index(f"ix_{name}_tenant_seq", table.c.tenant_id, table.c.seq)
    sa.Index(f"ix_{name}_tenant_alias", table.c.tenant_id, table.c.alias, unique=True)
    sa.Index(f"ix_{name}_tenant_updated", table.c.tenant_id, table.c.updated_at)
    for column in lookup_fields:
        sa.Index(f"ix_{name}_tenant_{column}", table.c.tenant_id, table.c[column])
