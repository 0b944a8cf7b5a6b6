"""Turning client input (camelCase, as on the wire) into column values, item by item.

Every problem is an ``ItemError`` with the item's index, field and a stable code; nothing here
raises for bad data. Inputs reach this module from GraphQL (already partly typed), from import
files and from device actions (plain JSON), so it checks everything itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from app.engine.registry import EntitySpec, FieldSpec, Ref
from app.engine.values import ID_RULE, camel, parse_date, parse_id

ALIAS_MAX = 255
find_surrogate = re.compile("[\ud800-\udfff]").search
"""The first unpaired surrogate in a string, or None."""
UNPAIRED = "is not valid Unicode (it has an unpaired surrogate)"


def valid_text(value: str) -> bool:
    """False for a string with an unpaired surrogate (JSON can carry ``"\\ud800"``; no
    database can store it)."""
    return value.isascii() or find_surrogate(value) is None


@dataclass
class ItemError:
    entity: str
    """The GraphQL type name (``User``)."""
    index: int
    code: str
    message: str
    id: str | None = None
    alias: str | None = None
    field: str | None = None


@dataclass
class Item:
    """One normalized input item: only the fields the client sent."""

    index: int
    id: str | None
    values: dict[str, Any] = field(default_factory=dict)
    """Column name -> value, for the domain fields and ``alias`` that were given."""
    refs: dict[Ref, str | list[str] | None] = field(default_factory=dict)
    """References as given (id, alias or lookup value), resolved later."""
    company_guid: str | None = None

    @property
    def alias(self) -> str | None:
        value = self.values.get("alias")
        return value if isinstance(value, str) else None


def input_names(spec: EntitySpec) -> dict[str, FieldSpec | Ref | str]:
    """Wire name -> what it sets (a field, a reference, or a sync key)."""
    names: dict[str, FieldSpec | Ref | str] = {"id": "id", "alias": "alias"}
    for f in spec.fields:
        names[camel(f.name)] = f
    for ref in spec.refs:
        names[camel(ref.name)] = ref
    if spec.company_guid:
        names["companyGuid"] = "companyGuid"
    return names


class Invalid(Exception):
    """A value the client must correct; ``message`` says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def normalize_items(
    spec: EntitySpec, raw_items: list[dict[str, Any]], start: int = 0
) -> tuple[list[Item], list[ItemError]]:
    """Check each raw item's fields and types; required fields are checked after merging.

    Each item is checked field by field against ``input_names``; nothing but this loop
    decides an item or words an error. Where the ``normalizer`` accelerator is on, the
    entity's generated normalizer (``spec.fast_normalizer``) takes the common items first
    and leaves the rest to the loop. ``start``: the index of the first item (for a slice of
    a batch)."""
    names = input_names(spec)
    fast = spec.fast_normalizer
    items: list[Item] = []
    errors: list[ItemError] = []
    for index, raw in enumerate(raw_items, start):
        item = fast(index, raw) if fast is not None else None
        if item is None:
            item, error = _normalize(spec, names, index, raw)
            if error is not None:
                errors.append(error)
                continue
        if item is not None:
            items.append(item)
    return items, errors


def raw_keys(raw_items: list[Any]) -> tuple[list[str], list[str]]:
    """The ids (canonical) and aliases a batch's items name, read from the raw items: every
    key the normalized items have, and those of items that fail normalization, so the rows
    can be read while the items are normalized. Each once, in no particular order (the
    reader sorts where order matters: PostgreSQL's row locks)."""
    ids: set[str] = set()
    aliases: set[str] = set()
    for raw in raw_items:
        if not isinstance(raw, dict):
            continue
        id_ = raw.get("id")
        if isinstance(id_, str):
            canonical = parse_id(id_)
            if canonical is not None:
                ids.add(canonical)
        alias = raw.get("alias")
        if isinstance(alias, str) and valid_text(alias):
            aliases.add(alias)
    return list(ids), list(aliases)


def _normalize(
    spec: EntitySpec, names: dict[str, FieldSpec | Ref | str], index: int, raw: object
) -> tuple[Item | None, ItemError | None]:
    def fail(code: str, message: str, fld: str | None = None) -> tuple[None, ItemError]:
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        raw_alias = raw.get("alias") if isinstance(raw, dict) else None
        return None, ItemError(
            entity=spec.name,
            index=index,
            code=code,
            message=message,
            id=raw_id if isinstance(raw_id, str) else None,
            alias=raw_alias if isinstance(raw_alias, str) else None,
            field=fld,
        )

    if not isinstance(raw, dict):
        return fail("UNPROCESSABLE", "an item must be an object")
    item = Item(index=index, id=None)
    for key, value in raw.items():
        target = names.get(key)
        if target is None:
            return fail("UNPROCESSABLE", f"unknown field {key!r} for {spec.name}", key)
        try:
            _set(item, target, value)
        except Invalid as exc:
            return fail("UNPROCESSABLE", f"{key}: {exc.message}", key)
    return item, None


def _set(item: Item, target: FieldSpec | Ref | str, value: Any) -> None:
    # Fields first: they are most of every item (and comparing one with a str would go
    # through the dataclass __eq__).
    if type(target) is FieldSpec:
        item.values[target.name] = None if value is None else coerce(target, value)
    elif target == "id":
        if value is None:
            return
        canonical = parse_id(value)
        if canonical is None:
            raise Invalid(f"{value!r} is not an id ({ID_RULE})")
        item.id = canonical
    elif target == "alias":
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise Invalid("must be a non-empty string")
            if len(value) > ALIAS_MAX:
                raise Invalid(f"is {len(value)} characters long, the limit is {ALIAS_MAX}")
            if not valid_text(value):
                raise Invalid(UNPAIRED)
        item.values["alias"] = value
    elif target == "companyGuid":
        if value is not None and not isinstance(value, str):
            raise Invalid("must be a string")
        item.company_guid = value
    elif isinstance(target, Ref):
        item.refs[target] = ref_value(target, value)


def ref_value(ref: Ref, value: Any) -> str | list[str] | None:
    if value is None:
        return None
    if ref.many:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise Invalid("must be a list of ids, aliases or lookup keys")
        if not all(valid_text(v) for v in value):
            raise Invalid(UNPAIRED)
        return list(value)
    if not isinstance(value, str) or not value:
        raise Invalid("must be an id, alias or lookup key")
    if not valid_text(value):
        raise Invalid(UNPAIRED)
    return value


def coerce(spec: FieldSpec, value: Any) -> Any:
    """The column value for one field, or ``Invalid`` with a message for the client."""
    kind = spec.kind
    if kind == "str":
        if not isinstance(value, str):
            raise Invalid("must be a string")
        if not valid_text(value):
            raise Invalid(UNPAIRED)
        if spec.max_length is not None and len(value) > spec.max_length:
            raise Invalid(f"is {len(value)} characters long, the limit is {spec.max_length}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise Invalid("must be true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid("must be an integer")
        if not -(2**31) <= value < 2**31:
            raise Invalid("is out of the 32-bit integer range")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid("must be a number")
        return float(value)
    if kind == "date":
        parsed = parse_date(value)
        if parsed is None:
            raise Invalid(f"{value!r} is not a date (use YYYY-MM-DD or dd/mm/yyyy)")
        return parsed
    if kind == "enum":
        return _enum_value(spec, value)
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Invalid("must be a list of strings")
        if not all(valid_text(v) for v in value):
            raise Invalid(UNPAIRED)
        return list(value)
    if kind == "object":
        return _object_value(spec, value)
    raise Invalid(f"unsupported kind {kind}")


def _enum_value(spec: FieldSpec, value: Any) -> str:
    assert spec.enum is not None
    if isinstance(value, Enum):
        value = value.value
    allowed = [m.value for m in spec.enum]
    if value not in allowed:
        raise Invalid(f"{value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _object_value(spec: FieldSpec, value: Any) -> dict[str, bool]:
    assert spec.shape is not None
    if not isinstance(value, dict):
        raise Invalid("must be an object")
    unknown = set(value) - set(spec.shape.fields)
    if unknown:
        raise Invalid(f"unknown keys {sorted(unknown)}")
    if not all(v is None or isinstance(v, bool) for v in value.values()):
        raise Invalid("values must be true or false")
    return {name: bool(value.get(name) or False) for name in spec.shape.fields}


def foreign_company(guid: object, tenant_id: str) -> bool:
    """Whether a ``companyGuid`` names another company than the caller's tenant."""
    return guid is not None and str(guid).lower() != tenant_id.lower()
