"""The GraphQL names an entity takes beside syncgraph's own. A user's entity named like one of
syncgraph's types (``Conflict``) or a collection named like one of its fields (``actions``)
would replace it, or be replaced, without a word: the schema refuses both, naming the entity
and its module."""

from __future__ import annotations

from typing import Any

from strawberry.exceptions import DuplicatedTypeName
from strawberry.utils.str_converters import to_camel_case

from app.engine.registry import EntitySpec, Registry
from app.errors import StartupError

_SUFFIXES = ("", "Input", "Batch", "Changes", "Connection", "Change", "Push")
"""The types generated per entity: ``Book``, ``BookInput``, ``BookBatch``…"""


class FieldClash(ValueError):
    def __init__(self, type_name: str, field: str, key: str) -> None:
        super().__init__(f"{type_name}.{field}")
        self.type_name, self.field, self.key = type_name, field, key


def with_entities(
    type_name: str, own: dict[str, Any], per_entity: dict[str, Any]
) -> dict[str, Any]:
    """``own`` fields of one of syncgraph's types, then the entities' fields (keyed by
    collection or singular name); one named like an own field is a ``FieldClash``."""
    taken = {to_camel_case(name) for name in own}
    for key in per_entity:
        if to_camel_case(key) in taken:
            raise FieldClash(type_name, to_camel_case(key), key)
    return {**own, **per_entity}


def clash_error(registry: Registry, exc: DuplicatedTypeName | FieldClash) -> StartupError:
    """The clash as a start-up error that names the entity, its module and the fix."""
    if isinstance(exc, FieldClash):
        spec = next(
            s for s in registry.ordered() if exc.key in (s.plural, s.name[0].lower() + s.name[1:])
        )
        what = "collection" if exc.key == spec.plural else "name"
        fix = "plural=" if exc.key == spec.plural else "name="
        return StartupError(
            f"entity {spec.name}{_in(registry, spec)}: its {what} {exc.key!r} makes the GraphQL "
            f"field {exc.type_name}.{exc.field}, which is syncgraph's own: rename it "
            f"(entity_spec {fix})"
        )
    type_name = exc.message.split()[1]
    owner = _owner(registry, type_name)
    if owner is None:
        return StartupError(f"the GraphQL type {type_name} is made twice: rename one")
    return StartupError(
        f"entity {owner.name}{_in(registry, owner)} makes the GraphQL type {type_name}, which "
        "another type has (syncgraph's own or another entity's): rename the entity "
        "(entity_spec name=), or its enum or object shape"
    )


def _owner(registry: Registry, type_name: str) -> EntitySpec | None:
    """The entity whose generated type, field enum or object shape is named ``type_name``
    (a user's before a shipped one: the newcomer is the one to rename)."""
    owners = [spec for spec in registry.ordered() if type_name in _type_names(spec)]
    owners.sort(key=lambda s: registry.module_of("entity", s.name).startswith("app."))
    return owners[0] if owners else None


def _type_names(spec: EntitySpec) -> set[str]:
    names = {spec.name + suffix for suffix in _SUFFIXES}
    names |= {f.shape.type_name for f in spec.fields if f.shape}
    names |= {f.enum.__name__ for f in spec.fields if f.enum}
    return names


def _in(registry: Registry, spec: EntitySpec) -> str:
    module = registry.module_of("entity", spec.name)
    return f" (in {module})" if module else ""
