"""Reading and writing entity rows: the shapes shared by sync, push and resync."""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import KEY_LOCKS_MAX, lock_keys, reads_in_background, select_rows, upsert_rows
from app.engine.registry import EntitySpec
from app.engine.values import camel
from app.engine.write.seq import SeqAllocator


def new_id() -> str:
    return str(uuid.uuid4())


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def defaults(spec: EntitySpec) -> dict[str, Any]:
    """Column values of a new record before the client's fields are applied (a new dict;
    mutable defaults are fresh too)."""
    template, mutable = defaults_template(spec)
    values = dict(template)
    for name in mutable:
        values[name] = copy.copy(template[name])
    return values


_DEFAULTS: dict[tuple[str, int], tuple[dict[str, Any], tuple[str, ...]]] = {}


def defaults_template(spec: EntitySpec) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The defaults of ``spec``'s columns (shared: copy before changing) and the names of
    those whose value is mutable."""
    key = (spec.name, id(spec))
    cached = _DEFAULTS.get(key)
    if cached is None:
        values: dict[str, Any] = {f.name: f.default for f in spec.fields}
        for ref in spec.refs:
            values[ref.column] = [] if ref.many else None
        values["alias"] = None
        mutable = tuple(k for k, v in values.items() if isinstance(v, list | dict | set))
        cached = _DEFAULTS[key] = (values, mutable)
    return cached


def same_data(spec: EntitySpec, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a write would change nothing a client can see (no version bump, no event)."""
    visible = spec.visible_values
    try:
        return bool(visible(old) == visible(new))  # two tuples built and compared in C
    except KeyError:
        return all(old.get(c) == new.get(c) for c in ("alias", *spec.data_columns))


def missing_required(spec: EntitySpec, record: dict[str, Any]) -> str | None:
    """The first required field (camelCase) that ``record`` leaves empty, if any."""
    for f in spec.required_fields:
        if record.get(f.name) is None:
            return camel(f.name)
    for ref in spec.refs:
        if ref.required and not record.get(ref.column):
            return camel(ref.name)
    return None


def lock_scope(spec: EntitySpec, tenant_id: str) -> str:
    """The advisory-lock scope of one tenant's rows of one entity (see ``lock_keys``)."""
    return f"{tenant_id}:{spec.table.name}"


async def lock_table(conn: AsyncConnection, spec: EntitySpec, tenant_id: str) -> None:
    """Hold the tenant's rows of ``spec`` alone until commit (cleanSync, resync)."""
    await lock_keys(conn, lock_scope(spec, tenant_id), [], exclusive=True)


PLANNED = ("tenant_id", "updated_at", "changed_at", "actor", "seq")
"""The columns a write sets whatever was stored (``write_columns``): ``sync`` reads rows
without them (``skip``); for 1,000 rows, two timestamps fewer per row to convert."""


async def load_rows(
    conn: AsyncConnection,
    spec: EntitySpec,
    tenant_id: str,
    *,
    ids: list[str],
    aliases: list[str] = (),  # type: ignore[assignment]
    lock: bool = True,
    skip: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Existing rows (tombstones included) named by id or alias, locked for the write.

    On PostgreSQL the keys themselves are locked first (advisory locks, in one sorted order;
    the whole scope for large batches), so two transactions creating the same new id or alias
    serialise instead of both planning an insert, and row locks are taken in id order so
    overlapping writers cannot deadlock."""
    if not ids and not aliases:
        return []
    if lock:
        await lock_row_keys(conn, spec, tenant_id, ids=ids, aliases=aliases)
    return await read_rows(conn, spec, tenant_id, ids=ids, aliases=aliases, lock=lock, skip=skip)


async def lock_row_keys(
    conn: AsyncConnection, spec: EntitySpec, tenant_id: str, *, ids: list[str], aliases: list[str]
) -> bool:
    """The advisory locks ``load_rows`` takes (see there); whether the scope is now held
    alone."""
    if len(ids) + len(aliases) > KEY_LOCKS_MAX:  # the scope, alone: no key names needed
        return await lock_keys(conn, lock_scope(spec, tenant_id), [], exclusive=True)
    keys = [f"i:{i}" for i in ids] + [f"a:{a}" for a in aliases]
    return await lock_keys(conn, lock_scope(spec, tenant_id), keys)


async def read_rows(
    conn: AsyncConnection,
    spec: EntitySpec,
    tenant_id: str,
    *,
    ids: list[str],
    aliases: list[str],
    lock: bool = True,
    skip: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """``load_rows`` without the advisory locks (the caller took them); ``skip``: columns
    left out of the rows (``PLANNED``)."""
    # One indexed query per key kind: "id IN … OR alias IN …" makes both databases scan
    # the tenant's whole range. Aliases held by rows already found by id need no query
    # (an alias names one record per tenant): a re-sent batch reads each row once.
    found: dict[str, dict[str, Any]] = {}
    row_locks = lock  # where the database has row locks (app.db.select_rows)
    for column, keys in (("id", ids), ("alias", list(aliases))):
        if column == "alias" and found:
            held = {row["alias"] for row in found.values()}
            keys = [a for a in keys if a not in held]
        if not keys:
            continue
        for row in await select_rows(
            conn, spec.table, tenant_id, column, keys, lock=row_locks, skip=skip
        ):
            found.setdefault(row["id"], row)
    return [found[key] for key in sorted(found)]


async def start_reading(
    conn: AsyncConnection,
    spec: EntitySpec,
    tenant_id: str,
    *,
    ids: list[str],
    aliases: list[str],
    skip: tuple[str, ...] = (),
) -> asyncio.Future[list[dict[str, Any]]]:
    """``read_rows``, begun: on PostgreSQL the query is on its way to the server when this
    returns, so the database reads while the caller computes (it must not use ``conn`` until
    it has awaited the result). On SQLite the read is done first: its queries run in a thread
    that would wait for the GIL on every row while this thread computes."""
    reading = read_rows(conn, spec, tenant_id, ids=ids, aliases=aliases, skip=skip)
    if not reads_in_background(conn):
        done = asyncio.get_running_loop().create_future()
        done.set_result(await reading)
        return done
    task = asyncio.ensure_future(reading)
    await asyncio.sleep(0)  # the task runs up to its first wait: the query is sent
    return task


async def write_rows(
    conn: AsyncConnection,
    spec: EntitySpec,
    rows: list[dict[str, Any]],
    seqs: SeqAllocator,
    *,
    defer: bool = False,
    stored: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Insert or overwrite whole rows: one statement for the batch (in id order, the order
    every writer locks in). ``defer`` leaves the write to ``stamp`` (``SeqAllocator.defer``):
    only for a transaction's last write, made while it holds the scope alone. ``stored``: the
    rows as the database holds them now, by id (see ``upsert_rows``)."""
    if not rows:
        return
    rows = sorted(rows, key=lambda row: str(row["id"]))
    if defer:
        seqs.defer(spec.table, rows, stored)
        return
    await upsert_rows(conn, spec.table, rows, stored)
    seqs.wrote(spec.table)


def write_columns(
    row: dict[str, Any],
    existing: dict[str, Any] | None,
    placeholder: int,
    tenant_id: str,
    now: datetime,
    *,
    changed_at: datetime | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Set, in ``row`` itself (the stored columns of a live record, or the defaults, with the
    change applied), the columns every write sets; returns it.

    A match on a tombstone revives it as a new record (``created_seq`` renumbered) so that
    pullers receive it as inserted; it keeps its ``created_at`` and counts on its version."""
    revived = existing is None or existing["deleted_at"] is not None
    row["tenant_id"] = tenant_id
    row["version"] = 1 if existing is None else existing["version"] + 1
    row["created_at"] = now if existing is None else existing["created_at"]
    row["updated_at"] = now
    row["changed_at"] = changed_at or now
    row["actor"] = actor
    row["seq"] = placeholder
    row["created_seq"] = placeholder if revived else existing["created_seq"]  # type: ignore[index]
    row["deleted_at"] = None
    return row


def public_record(spec: EntitySpec, row: dict[str, Any]) -> dict[str, Any]:
    """A row as the API shows it (camelCase), for conflict reports and action payloads."""
    record: dict[str, Any] = {"id": row["id"], "alias": row.get("alias")}
    for f in spec.fields:
        value = row.get(f.name)
        record[camel(f.name)] = value.isoformat() if isinstance(value, date) else value
    for ref in spec.refs:
        record[camel(ref.column)] = row.get(ref.column)
    record["version"] = row.get("version")
    for key in ("created_at", "updated_at"):
        value = aware(row.get(key))
        record[camel(key)] = value.isoformat() if value else None
    if row.get("deleted_at") is not None:
        record["deleted"] = True
    return record
