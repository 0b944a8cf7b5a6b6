"""Resolving reference strings (id, alias, or a lookup column such as a user's email) to ids,
one query per target entity per batch."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import in_parameter, statement
from app.engine.registry import EntitySpec, Ref, Registry
from app.engine.values import camel, parse_id
from app.engine.write.items import Item, ItemError


async def resolve_references(
    conn: AsyncConnection, registry: Registry, tenant_id: str, spec: EntitySpec, items: list[Item]
) -> tuple[list[Item], list[ItemError]]:
    """Write resolved ids into ``item.values[ref.column]``; unresolved items become errors."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for item in items:
        for ref, raw in item.refs.items():
            if type(raw) is str:
                wanted[ref.target].add(raw)
            elif raw:
                wanted[ref.target].update(raw)
    lookups = {
        target: await _lookup(conn, registry.entities[target], tenant_id, keys)
        for target, keys in wanted.items()
    }
    ok: list[Item] = []
    errors: list[ItemError] = []
    for item in items:
        error = _apply(spec, item, lookups) if item.refs else None
        if error is None:
            ok.append(item)
        else:
            errors.append(error)
    return ok, errors


def _apply(spec: EntitySpec, item: Item, lookups: dict[str, dict[str, str]]) -> ItemError | None:
    for ref, raw in item.refs.items():
        table = lookups.get(ref.target, {})
        if type(raw) is str:  # the common case: one key
            resolved = table.get(raw)
            if resolved is None:
                return _unresolved(spec, item, ref, [raw])
            item.values[ref.column] = resolved
            continue
        keys = list(raw or [])
        missing = [k for k in keys if k not in table]
        if missing:
            return _unresolved(spec, item, ref, missing)
        item.values[ref.column] = _resolved(ref, raw, table)
    return None


def _unresolved(spec: EntitySpec, item: Item, ref: Ref, missing: list[str]) -> ItemError:
    return ItemError(
        entity=spec.name,
        index=item.index,
        code="UNRESOLVED_REFERENCE",
        message=f"{camel(ref.name)}: no {ref.target} with id or alias "
        + ", ".join(map(repr, missing)),
        id=item.id,
        alias=item.alias,
        field=camel(ref.name),
    )


def _resolved(ref: Ref, raw: str | list[str] | None, table: dict[str, str]) -> Any:
    if raw is None:
        return [] if ref.many else None
    if isinstance(raw, str):
        return table[raw]
    return list(dict.fromkeys(table[k] for k in raw))


async def _lookup(
    conn: AsyncConnection, target: EntitySpec, tenant_id: str, keys: set[str]
) -> dict[str, str]:
    """key -> id for every key that names exactly one live record (id first, then alias,
    then the lookup columns)."""
    if not keys:
        return {}
    key_list = sorted(keys)
    ids = sorted({i for k in key_list if (i := parse_id(k))})
    query = statement(
        conn, ("references", target.name, bool(ids)), lambda: _query(conn, target, bool(ids))
    )
    params: dict[str, Any] = {"tenant": tenant_id, "keys": key_list}
    if ids:
        params["ids"] = ids
    found: dict[str, Any] = {}
    for row in (await conn.execute(query, params)).all():
        found[row.id] = row
    rows = list(found.values())
    by_id = {row.id: row.id for row in rows}
    by_alias = {row.alias: row.id for row in rows if row.alias is not None}
    result: dict[str, str] = {}
    for key in key_list:
        canonical = parse_id(key)
        if canonical is not None and canonical in by_id:
            result[key] = canonical
        elif key in by_alias:
            result[key] = by_alias[key]
        else:
            for col in target.lookup_fields:
                matches = {row.id for row in rows if getattr(row, col) == key}
                if len(matches) == 1:
                    result[key] = matches.pop()
                    break
    return result


def _query(conn: AsyncConnection, target: EntitySpec, ids: bool) -> sa.CompoundSelect[Any]:
    """The live records of ``tenant`` whose alias, id (when ``ids``) or lookup column is
    one of ``keys`` (or ``ids``): parameters, so that it is built once per target."""
    t = target.table
    conditions = [in_parameter(conn, t.c.alias, "keys")]
    if ids:
        conditions.append(in_parameter(conn, t.c.id, "ids"))
    conditions += [in_parameter(conn, t.c[col], "keys") for col in target.lookup_fields]
    columns = [t.c.id, t.c.alias, *(t.c[col] for col in target.lookup_fields)]
    tenant: sa.BindParameter[str] = sa.bindparam("tenant")
    # One indexed lookup per key kind, in one statement (a UNION ALL: one round trip): with
    # "alias IN … OR id IN …" both databases walk the tenant's whole range (17 ms for 1,000
    # keys at 20,000 rows on SQLite, growing with it).
    return sa.union_all(
        *(
            sa.select(*columns).where(t.c.tenant_id == tenant, t.c.deleted_at.is_(None), condition)
            for condition in conditions
        )
    )
