"""Which records a view shows now: its rules evaluated in SQL, entity after entity.

Every rule is one indexed statement over live records (``deleted_at IS NULL``): the
parameter's record by id or alias, a to-one reference by its ``(tenant, column)`` index, a
to-many one by ``array_overlaps_parameter`` (a GIN index on PostgreSQL), "referenced by" by
primary key. A parameter whose record is gone (or was never there) matches nothing, and every
statement is bounded by the tenant, so a value naming another tenant's record matches
nothing either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import array_overlaps_parameter, favour_index_scans, in_parameter, statement
from app.engine.registry import EntitySpec, Registry
from app.engine.values import parse_id
from app.engine.views.spec import Binding, IsParam, ReferencedBy, RefIs, RefVisible, View

Stamp = tuple[int, int]
"""A visible record's (seq, version)."""


@dataclass
class Visible:
    """The records a view shows: by collection, id -> (seq, version)."""

    records: dict[str, dict[str, Stamp]]

    def ids(self, plural: str) -> set[str]:
        return set(self.records.get(plural, ()))


async def visible(
    conn: AsyncConnection,
    registry: Registry,
    tenant_id: str,
    view: View,
    binding: Binding,
    *,
    only: set[str] | None = None,
) -> Visible:
    """The view's records as ``conn`` sees the database. ``only``: the collections wanted
    (the entities their rules read are evaluated too, but not returned). Each rule's
    statement is built from parameters once per view and step (``app.db.statement``)."""
    await favour_index_scans(conn)
    params = await _resolve_params(conn, registry, tenant_id, view, binding)
    needed = _needed(registry, view, only)
    refs_read = _refs_read(view)
    found: dict[str, dict[str, Stamp]] = {}
    refs_of: dict[str, dict[str, list[str]]] = {}
    """Entity -> ref column -> the ids the visible records point at."""
    for name, steps in view.steps.items():
        if name not in needed:
            continue
        spec = registry.entities[name]
        extra = refs_read.get(name, ())
        rows: dict[str, Any] = {}
        for n, step in enumerate(steps):
            values = _rule_values(step, params, found, refs_of, registry)
            if values is None:
                continue

            key = ("visible", view.name, name, n, extra)
            stmt = statement(conn, key, functools.partial(_rule_statement, conn, spec, step, extra))
            for row in await conn.execute(stmt, {"tenant": tenant_id, **values}):
                rows[row[0]] = row
        found[spec.plural] = {id_: (int(r[1]), int(r[2])) for id_, r in rows.items()}
        if extra:
            refs_of[name] = {
                c: _targets(r[3 + i] for r in rows.values()) for i, c in enumerate(extra)
            }
    if only is not None:
        found = {k: v for k, v in found.items() if k in only}
    return Visible(found)


def _rule_statement(
    conn: AsyncConnection, spec: EntitySpec, step: Any, extra: tuple[str, ...]
) -> sa.Select[Any]:
    """One rule's live records of ``tenant``: id, seq, version and the ``extra`` columns."""
    t = spec.table
    return sa.select(t.c.id, t.c.seq, t.c.version, *(t.c[c] for c in extra)).where(
        t.c.tenant_id == sa.bindparam("tenant"),
        t.c.deleted_at.is_(None),
        _rule_condition(conn, step, t),
    )


def _rule_condition(conn: AsyncConnection, step: Any, t: sa.Table) -> Any:
    """The rule as a WHERE condition of named parameters (``_rule_values`` gives them)."""
    rule = step.rule
    if isinstance(rule, IsParam):
        return t.c.id == sa.bindparam("value")
    if isinstance(rule, RefIs | RefVisible):
        column = t.c[step.ref.column]
        if step.ref.many:
            return array_overlaps_parameter(conn, column, "ids", tenant=sa.bindparam("tenant"))
        if isinstance(rule, RefIs):
            return column == sa.bindparam("value")
        return in_parameter(conn, column, "ids")
    if isinstance(rule, ReferencedBy):
        return in_parameter(conn, t.c.id, "ids")
    return sa.true()  # Everything


def _rule_values(
    step: Any,
    params: dict[str, str | None],
    found: dict[str, dict[str, Stamp]],
    refs_of: dict[str, dict[str, list[str]]],
    registry: Registry,
) -> dict[str, Any] | None:
    """The values of the rule's parameters; None when it can match nothing."""
    rule = step.rule
    if isinstance(rule, IsParam | RefIs):
        value = params[rule.param]
        if value is None:
            return None
        return {"ids": [value]} if isinstance(rule, RefIs) and step.ref.many else {"value": value}
    if isinstance(rule, RefVisible):
        ids = sorted(found[registry.entities[step.source].plural])
        return {"ids": ids} if ids else None
    if isinstance(rule, ReferencedBy):
        targets = refs_of.get(step.source, {}).get(step.ref.column, [])
        return {"ids": targets} if targets else None
    return {}  # Everything


def _targets(values: Any) -> list[str]:
    """The ids a column of references holds over several rows (to-one or to-many)."""
    out: set[str] = set()
    for value in values:
        if isinstance(value, list):
            out.update(v for v in value if isinstance(v, str))
        elif isinstance(value, str):
            out.add(value)
    return sorted(out)


def _refs_read(view: View) -> dict[str, tuple[str, ...]]:
    """Entity -> the reference columns "referenced by" rules read from its visible records."""
    out: dict[str, list[str]] = {}
    for steps in view.steps.values():
        for step in steps:
            if isinstance(step.rule, ReferencedBy) and step.source and step.ref:
                columns = out.setdefault(step.source, [])
                if step.ref.column not in columns:
                    columns.append(step.ref.column)
    return {k: tuple(v) for k, v in out.items()}


def _needed(registry: Registry, view: View, only: set[str] | None) -> set[str]:
    """The view's entities to evaluate for the collections ``only`` (None: all)."""
    if only is None:
        return set(view.steps)
    wanted = [n for n in view.steps if registry.entities[n].plural in only]
    needed: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in needed:
            continue
        needed.add(name)
        wanted.extend(s.source for s in view.steps[name] if s.source is not None)
    return needed


async def _resolve_params(
    conn: AsyncConnection, registry: Registry, tenant_id: str, view: View, binding: Binding
) -> dict[str, str | None]:
    """Parameter -> the id of the live record its value names (by id or alias), or None."""
    out: dict[str, str | None] = {}
    values = binding.values
    for param, entity in view.param_entities.items():
        value = values.get(param)
        out[param] = None
        if value is None:
            continue
        t = registry.entities[entity].table
        names = {value}
        normal = parse_id(value)
        if normal is not None:
            names.add(normal)

        def build(t: sa.Table = t) -> sa.CompoundSelect[Any]:
            # two indexed probes: "id IN … OR alias = …" scans the tenant's whole range
            live = sa.select(t.c.id, t.c.alias).where(
                t.c.tenant_id == sa.bindparam("tenant"), t.c.deleted_at.is_(None)
            )
            by_id = live.where(in_parameter(conn, t.c.id, "names"))
            return sa.union_all(by_id, live.where(t.c.alias == sa.bindparam("value")))

        stmt = statement(conn, ("view-param", entity), build)
        bound = {"tenant": tenant_id, "names": sorted(names), "value": value}
        rows = (await conn.execute(stmt, bound)).all()
        by_id = [r.id for r in rows if r.id in names]  # an id wins over another's alias
        out[param] = (by_id or [r.id for r in rows])[0] if rows else None
    return out


async def visible_ids(
    conn: AsyncConnection, registry: Registry, tenant_id: str, binding: Binding, spec: EntitySpec
) -> frozenset[str]:
    """The ids of ``spec``'s records the binding's view shows, as ``conn`` sees the database
    (the entities its rules read are evaluated, the others not); none, without a statement,
    when the view does not list the entity."""
    view = registry.views[binding.name]
    if spec.name not in view.steps:
        return frozenset()
    found = await visible(conn, registry, tenant_id, view, binding, only={spec.plural})
    return frozenset(found.ids(spec.plural))
