"""The generated item normalizer: one straight-line function per entity.

Replaces, for the common item, the generic loop of ``app.engine.write.items.normalize_items`` (a
dictionary lookup and a call per field, each value checked by ``coerce``). The generated
function reads the entity's known fields in one pass with the usual checks inlined and builds
the ``Item`` itself. It never decides an error: anything it does not accept as it is (a
problem, a non-canonical id, an unusual value) makes it answer None, and the generic code
normalizes that item and has the last word on every message.

Checked by ``tests/engine/test_accel_normalizer.py`` (every entity, every field kind, odd
values, both date forms, references: the same items and errors as the generic loop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.engine.registry import EntitySpec, FieldSpec
from app.engine.values import camel, parse_date, stored_id
from app.engine.write.items import (
    ALIAS_MAX,
    Invalid,
    Item,
    coerce,
    find_surrogate,
    ref_value,
)

Normalizer = Callable[[int, Any], Item | None]
"""``fast(index, raw)``: the item, or None for "let the generic code decide"."""

_MISSING = object()


def compile_normalizer(spec: EntitySpec) -> Normalizer:
    """Generate the entity's normalizer (once per ``EntitySpec``: it is kept on the spec)."""
    env: dict[str, Any] = {
        "Item": Item,
        "M": _MISSING,
        "id_ok": stored_id,
        "parse_date": parse_date,
        "coerce": coerce,
        "ref_value": ref_value,
        "Invalid": Invalid,
        "surrogate": find_surrogate,
    }
    lines = _head()
    for i, f in enumerate(spec.fields):
        env[f"F{i}"] = f
        lines += [f"    v = get({camel(f.name)!r}, M)", "    if v is not M:", "        n += 1"]
        lines += ["        if v is not None:"]
        lines += [f"            {line}" for line in _field_check(f, f"F{i}")]
        lines += [f"        values[{f.name!r}] = v"]
    for i, ref in enumerate(spec.refs):
        env[f"R{i}"] = ref
        lines += [
            f"    v = get({camel(ref.name)!r}, M)",
            "    if v is not M:",
            "        n += 1",
            "        try:",
            f"            refs[R{i}] = ref_value(R{i}, v)",
            "        except Invalid:",
            "            return None",
        ]
    if spec.company_guid:
        lines += [
            "    v = get('companyGuid', M)",
            "    if v is not M:",
            "        n += 1",
            "        if v is not None and type(v) is not str: return None",
            "        guid = v",
        ]
    lines += [
        "    if n != len(raw): return None",  # an unknown key: the generic code names it
        "    return Item(index, id_, values, refs, guid)  # positional: twice as fast",
    ]
    exec(compile("\n".join(lines), f"<normalize {spec.name}>", "exec"), env)  # noqa: S102
    fast: Normalizer = env["fast"]
    return fast


def _head() -> list[str]:
    """The start of every normalizer: the item's ``id`` and ``alias``."""
    return [
        "def fast(index, raw):",
        "    if type(raw) is not dict: return None",
        "    get = raw.get",
        "    values = {}",
        "    refs = {}",
        "    id_ = None",
        "    guid = None",
        "    n = 0",
        "    v = get('id', M)",
        "    if v is not M:",
        "        n += 1",
        "        if v is not None:",
        "            if type(v) is not str or id_ok(v) is None: return None",
        "            id_ = v",
        "    v = get('alias', M)",
        "    if v is not M:",
        "        n += 1",
        "        if v is not None and (",
        f"            type(v) is not str or len(v) > {ALIAS_MAX} or not v.strip()",
        "            or not (v.isascii() or surrogate(v) is None)",
        "        ): return None",
        "        values['alias'] = v",
    ]


def _field_check(f: FieldSpec, ref: str) -> list[str]:
    """Lines that leave the column value in ``v`` or return None (the generic code decides)."""
    if f.kind == "str":
        limit = f" or len(v) > {f.max_length}" if f.max_length is not None else ""
        return [
            f"if type(v) is not str{limit} or not (v.isascii() or surrogate(v) is None):",
            "    return None",
        ]
    if f.kind == "bool":
        return ["if type(v) is not bool: return None"]
    if f.kind == "int":
        return ["if type(v) is not int or not -2147483648 <= v <= 2147483647: return None"]
    if f.kind == "float":
        return [
            "if type(v) is not float:",
            "    if type(v) is not int: return None",
            "    v = float(v)",
        ]
    if f.kind == "date":
        return ["v = parse_date(v)", "if v is None: return None"]
    if f.kind == "strlist":
        return [
            "if type(v) is not list: return None",
            "for x in v:",
            "    if type(x) is not str or not (x.isascii() or surrogate(x) is None): return None",
            "v = list(v)",
        ]
    if f.kind == "enum" and f.enum is not None:
        allowed = frozenset(str(m.value) for m in f.enum)
        return [f"if type(v) is not str or v not in {set(allowed)!r}: return None"]
    if f.kind == "object" and f.shape is not None:
        names = f.shape.fields
        result = ", ".join(f"{n!r}: v.get({n!r}) is True" for n in names)
        return [
            "if type(v) is not dict: return None",
            "for k, x in v.items():",
            f"    if k not in {set(names)!r} or (x is not None and type(x) is not bool):",
            "        return None",
            f"v = {{{result}}}",
        ]
    return ["try:", f"    v = coerce({ref}, v)", "except Invalid:", "    return None"]
