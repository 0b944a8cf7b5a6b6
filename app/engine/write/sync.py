"""Bulk upsert (``sync``): mirror a source of truth, entity by entity in dependency order.

Sync's policy on the write road (``app.engine.write``): the item wins. Per batch: normalize
items, resolve references, load the matching rows once, plan each item (insert, update,
unchanged or error), tombstone what cleanSync removes, and write the changed rows in one
statement. Item errors are results; only request-level problems raise.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import locks_table
from app.engine.registry import EntitySpec, Registry
from app.engine.write.guard import OUT_OF_VIEW, OUT_OF_VIEW_MESSAGE, through_view
from app.engine.write.items import Item, ItemError, foreign_company, normalize_items, raw_keys
from app.engine.write.references import resolve_references
from app.engine.write.rows import (
    PLANNED,
    defaults_template,
    load_rows,
    lock_row_keys,
    lock_table,
    missing_required,
    new_id,
    read_rows,
    same_data,
    start_reading,
)
from app.engine.write.rowset import RowSet
from app.engine.write.tx import WriteTx
from app.errors import BatchTooLarge, Forbidden

NORMALIZE_SLICE = 250
"""Items normalized between two looks at the event loop (see ``_normalize``)."""

CleanSyncOutcome = Literal["APPLIED", "SKIPPED_ITEM_ERRORS", "REFUSED_MASS_DELETE"]


@dataclass
class Batch:
    data: list[dict[str, Any]]
    clean_sync: bool = False


@dataclass
class EntityResult:
    spec: EntitySpec
    ids: list[str | None]
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    deleted_ids: list[str] = field(default_factory=list)
    clean_sync: CleanSyncOutcome | None = None
    errors: list[ItemError] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len({e.index for e in self.errors})


@dataclass
class SyncResult:
    entities: dict[str, EntityResult]
    """By collection name, in dependency order."""
    checkpoint: int = 0

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.entities.values())


def check_batches(registry: Registry, batches: dict[str, Batch], *, limit_for: Any) -> None:
    """Request-level checks, before anything is written."""
    for plural, batch in batches.items():
        spec = registry.by_plural(plural)
        limit = limit_for(plural)
        if len(batch.data) > limit:
            raise BatchTooLarge(spec.plural, len(batch.data), limit)


def check_company(registry: Registry, tenant_id: str, batches: dict[str, Batch]) -> None:
    """``companyGuid`` must name the caller's tenant: anything else fails the whole request."""
    for plural, batch in batches.items():
        if not registry.by_plural(plural).company_guid:
            continue
        for index, raw in enumerate(batch.data):
            guid = raw.get("companyGuid") if isinstance(raw, dict) else None
            if foreign_company(guid, tenant_id):
                raise Forbidden(
                    f"{plural}[{index}].companyGuid {guid!r} is not the caller's company"
                )


async def apply_sync(
    tx: WriteTx,
    registry: Registry,
    batches: dict[str, Batch],
    *,
    force: bool = False,
    defer_last: bool = False,
) -> SyncResult:
    """Apply every batch in dependency order inside the writer's transaction (stamped by its
    edge). ``defer_last``: the edge stamps next, so the last batch's rows may be left to the
    stamp (written once, with their final seqs). A view-bound writer's batches go through its
    view (``through_view``)."""
    check_company(registry, tx.tenant_id, batches)
    specs = [spec for spec in registry.ordered() if spec.plural in batches]

    async def apply() -> SyncResult:
        results: dict[str, EntityResult] = {}
        for spec in specs:
            results[spec.plural] = await apply_batch(
                tx,
                registry,
                spec,
                batches[spec.plural],
                force=force,
                may_defer=defer_last and spec is specs[-1],
            )
        return SyncResult(entities=results)

    return await through_view(tx, set(batches), apply)


async def apply_batch(
    tx: WriteTx,
    registry: Registry,
    spec: EntitySpec,
    batch: Batch,
    *,
    force: bool,
    may_defer: bool = False,
) -> EntityResult:
    """Load, plan (the item wins), clean, write: one entity's batch on the write road."""
    result = EntityResult(spec=spec, ids=[None] * len(batch.data))
    live_before: set[str] = set()
    if batch.clean_sync:
        await lock_table(tx.conn, spec, tx.tenant_id)
        live_before = await live_ids(tx.conn, spec, tx.tenant_id)
    rows, items, errors, alone = await _load_and_prepare(tx, registry, spec, batch)
    rowset = RowSet(spec, tx, rows)
    errors += _plan(spec, items, rowset, result)
    result.errors = sorted(errors, key=lambda e: e.index)
    for error in result.errors:
        result.ids[error.index] = None
    if batch.clean_sync:
        await clean_sync(tx, rowset, result, live_before, force=force)
    await rowset.write(defer=may_defer and (alone or batch.clean_sync))
    return result


async def _load_and_prepare(
    tx: WriteTx, registry: Registry, spec: EntitySpec, batch: Batch
) -> tuple[list[dict[str, Any]], list[Item], list[ItemError], bool]:
    """The stored rows the batch names, its normalized items with their references resolved,
    the item errors so far, and whether the transaction holds the entity's rows alone. The rows
    are read while the items are normalized: the keys come from the raw items."""
    conn, tenant_id = tx.conn, tx.tenant_id
    raw_ids, raw_aliases = raw_keys(batch.data)
    alone = locks_table(conn, len(raw_ids) + len(raw_aliases))
    existing: list[dict[str, Any]] = []
    if raw_ids or raw_aliases:
        await lock_row_keys(conn, spec, tenant_id, ids=raw_ids, aliases=raw_aliases)
        reading = await start_reading(
            conn, spec, tenant_id, ids=raw_ids, aliases=raw_aliases, skip=PLANNED
        )
        try:
            items, errors = await _normalize(spec, batch.data)
        finally:
            existing = await reading  # the connection is free again, whatever happened
    else:
        items, errors = await _normalize(spec, batch.data)
    items, ref_errors = await resolve_references(conn, registry, tenant_id, spec, items)
    existing += await _unread(conn, spec, tenant_id, items, raw_ids, raw_aliases)
    return existing, items, errors + ref_errors, alone


async def _normalize(
    spec: EntitySpec, data: list[dict[str, Any]]
) -> tuple[list[Item], list[ItemError]]:
    """``normalize_items`` in slices, letting a pending read send its next query between them."""
    items: list[Item] = []
    errors: list[ItemError] = []
    for start in range(0, len(data), NORMALIZE_SLICE):
        slice_items, slice_errors = normalize_items(
            spec, data[start : start + NORMALIZE_SLICE], start
        )
        items += slice_items
        errors += slice_errors
        await asyncio.sleep(0)
    return items, errors


async def _unread(
    conn: AsyncConnection,
    spec: EntitySpec,
    tenant_id: str,
    items: list[Item],
    ids: list[str],
    aliases: list[str],
) -> list[dict[str, Any]]:
    """The rows of keys the normalized items have but ``raw_keys`` did not give (none while
    the two agree; a safety net, since a row not read would be overwritten as new)."""
    known_ids, known_aliases = set(ids), set(aliases)
    more_ids = sorted({i.id for i in items if i.id and i.id not in known_ids})
    more_aliases = sorted({a for i in items if (a := i.alias) and a not in known_aliases})
    if not more_ids and not more_aliases:
        return []
    return await load_rows(conn, spec, tenant_id, ids=more_ids, aliases=more_aliases, skip=PLANNED)


def _plan(
    spec: EntitySpec, items: list[Item], rowset: RowSet, result: EntityResult
) -> list[ItemError]:
    """Sync's policy, the item wins: each item inserts, updates or leaves unchanged the record
    it names (by id, else alias), at most once per batch; returns the item errors."""
    by_id = rowset.stored
    by_alias = {a: by_id[i] for a, i in rowset.stored_aliases.items()}
    taken: dict[tuple[str, str], int] = {}
    errors: list[ItemError] = []
    required = bool(spec.required_fields) or any(ref.required for ref in spec.refs)
    template = defaults_template(spec)
    guarded = rowset.guarded
    for item in items:
        row, error = _match(spec, item, item.alias, by_id, by_alias)
        live = row is not None and row["deleted_at"] is None
        if guarded and _out_of_view(rowset, item):
            error = _error(spec, item, OUT_OF_VIEW, OUT_OF_VIEW_MESSAGE, None)
        if error is None:
            out = _record_after(item, row, live, template)
            claims = _claims(out)
            error = _duplicate(spec, item, claims, taken)
            if error is None and required:
                error = _missing_required(spec, item, out)
        if error is not None:
            errors.append(error)
            continue
        taken.update(dict.fromkeys(claims, item.index))
        result.ids[item.index] = out["id"]
        if not live:
            result.inserted += 1
        elif same_data(spec, row, out):  # type: ignore[arg-type]
            result.unchanged += 1
            continue
        else:
            result.updated += 1
        rowset.put(row, out, item=item.index)
    return errors


def _out_of_view(rowset: RowSet, item: Item) -> bool:
    """The view's check of an item: the records it names by id and by alias."""
    alias = item.alias
    return rowset.out_of_view(
        item.index, item.id, rowset.stored_aliases.get(alias) if alias is not None else None
    )


def _record_after(
    item: Item,
    row: dict[str, Any] | None,
    live: bool,
    template: tuple[dict[str, Any], tuple[str, ...]],
) -> dict[str, Any]:
    """The record after this item: a live row keeps what the item omits; a new or revived
    record starts from the defaults (mutable ones copied)."""
    values = item.values
    if live:
        assert row is not None
        return {**row, **values}
    defaults, mutable = template
    target = row["id"] if row is not None else (item.id or new_id())
    out = {**defaults, **values, "id": target}
    for name in mutable:
        if name not in values:
            out[name] = copy.copy(defaults[name])
    return out


def _claims(out: dict[str, Any]) -> list[tuple[str, str]]:
    """The keys a record holds in its batch: its id, and its alias when it has one."""
    if out["alias"] is None:
        return [("id", out["id"])]
    return [("id", out["id"]), ("alias", out["alias"])]


def _duplicate(
    spec: EntitySpec, item: Item, claims: list[tuple[str, str]], taken: dict[tuple[str, str], int]
) -> ItemError | None:
    """An item naming a record (by id or alias) that an earlier item of the batch already
    wrote: two new items with one alias would otherwise collide in the database."""
    for key in claims:
        if key in taken:
            message = f"the same record is also item {taken[key]} of this batch"
            return _error(spec, item, "UNPROCESSABLE", message, key[0])
    return None


def _match(
    spec: EntitySpec,
    item: Item,
    alias: str | None,
    by_id: dict[str, Any],
    by_alias: dict[str, Any],
) -> tuple[dict[str, Any] | None, ItemError | None]:
    """The stored row an item names: by id, else by alias; both naming different records is
    a KEY_MISMATCH, unless the alias's record is deleted (then the alias is free)."""
    alias_row = by_alias.get(alias) if alias else None
    if item.id is None:
        return alias_row, None
    if alias_row is not None and alias_row["id"] != item.id and alias_row["deleted_at"] is None:
        return None, _error(
            spec,
            item,
            "KEY_MISMATCH",
            f"alias {alias!r} belongs to record {alias_row['id']}, not {item.id}",
            "alias",
        )
    return by_id.get(item.id), None


def _missing_required(spec: EntitySpec, item: Item, merged: dict[str, Any]) -> ItemError | None:
    missing = missing_required(spec, merged)
    if missing is None:
        return None
    return _error(spec, item, "UNPROCESSABLE", f"{missing} is required", missing)


def _error(spec: EntitySpec, item: Item, code: str, message: str, field: str | None) -> ItemError:
    return ItemError(
        entity=spec.name,
        index=item.index,
        code=code,
        message=message,
        id=item.id,
        alias=item.alias,
        field=field,
    )


async def live_ids(conn: AsyncConnection, spec: EntitySpec, tenant_id: str) -> set[str]:
    t = spec.table
    rows = await conn.execute(
        sa.select(t.c.id).where(t.c.tenant_id == tenant_id, t.c.deleted_at.is_(None))
    )
    return set(rows.scalars().all())


async def clean_sync(
    tx: WriteTx,
    rowset: RowSet,
    result: EntityResult,
    live_before: set[str],
    *,
    force: bool,
) -> None:
    """Tombstone (in ``rowset``) the live records the batch did not name, unless that is
    not safe: an item failed, or more than half would go without ``force``."""
    spec = rowset.spec
    await lock_table(tx.conn, spec, tx.tenant_id)  # already held when called from apply_batch
    keep = {i for i in result.ids if i is not None}
    doomed = sorted(live_before - keep)
    if result.errors:
        result.clean_sync = "SKIPPED_ITEM_ERRORS"
        return
    if len(doomed) * 2 > len(live_before) and not force:
        result.clean_sync = "REFUSED_MASS_DELETE"
        return
    unread = [i for i in doomed if i not in rowset.rows]
    if unread:
        rowset.adopt(
            await read_rows(tx.conn, spec, tx.tenant_id, ids=unread, aliases=[], skip=PLANNED)
        )
    for id_ in doomed:
        rowset.delete(rowset.rows[id_])
    result.clean_sync = "APPLIED"
    result.deleted = len(doomed)
    result.deleted_ids = doomed


async def clean_entity(
    tx: WriteTx, spec: EntitySpec, result: EntityResult, live_before: set[str], *, force: bool
) -> None:
    """cleanSync on its own (``syncgraph import`` runs it once, after every batch)."""
    rowset = RowSet(spec, tx)
    await clean_sync(tx, rowset, result, live_before, force=force)
    await rowset.write()
