"""Client push (back-sync): apply offline edits with conflict detection.

Per entity (in dependency order) the rows a push names are loaded once; each change is then
judged against the in-memory row (so several changes to one record apply in order), and the
changed rows are written with one statement per entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import locks_table
from app.engine.items import Item, ItemError, camel, foreign_company, normalize_items, parse_uuid
from app.engine.references import in_values, resolve_references
from app.engine.registry import EntitySpec, Registry
from app.engine.rows import (
    aware,
    defaults,
    load_rows,
    prepare_write,
    public_record,
    same_data,
    write_rows,
)
from app.engine.seq import SeqAllocator
from app.errors import BadRequest, BatchTooLarge, Forbidden

Policy = Literal["REJECT", "LAST_WRITE_WINS"]
Kind = Literal["inserted", "updated", "deleted"]
KINDS: tuple[Kind, ...] = ("inserted", "updated", "deleted")


@dataclass
class Change:
    id: Any
    base_version: int | None = None
    changed_at: datetime | None = None
    actor: str | None = None
    data: dict[str, Any] | None = None


@dataclass
class EntityPush:
    inserted: list[Change] = field(default_factory=list)
    updated: list[Change] = field(default_factory=list)
    deleted: list[Change] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inserted) + len(self.updated) + len(self.deleted)


@dataclass
class PushRequest:
    entities: dict[str, EntityPush]
    since: int | None = None
    from_date: datetime | None = None
    atomic: bool = False
    policy: Policy = "REJECT"


@dataclass
class Conflict:
    entity: str
    id: str
    reason: str
    server_version: int | None
    server_record: dict[str, Any] | None


@dataclass
class PushResult:
    applied: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    checkpoint: int = 0
    changed_ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return bool(self.conflicts or self.errors)


def check_push(request: PushRequest, registry: Registry, *, limit_for: Any) -> None:
    if request.since is not None and request.from_date is not None:
        raise BadRequest("give either since or fromDate, not both")
    for plural, changes in request.entities.items():
        limit = limit_for(plural)
        if len(changes) > limit:
            raise BatchTooLarge(registry.by_plural(plural).plural, len(changes), limit)


async def apply_push(
    conn: AsyncConnection,
    registry: Registry,
    request: PushRequest,
    *,
    tenant_id: str,
    seqs: SeqAllocator,
    now: datetime | None = None,
    defer_last: bool = False,
) -> PushResult:
    """Apply a push inside the caller's transaction (not stamped). With ``atomic`` the caller
    rolls back when the result has any conflict or error. ``defer_last``: the caller stamps
    next (see ``apply_sync``)."""
    _check_company(registry, request, tenant_id)
    now = now or datetime.now(UTC)
    result = PushResult()
    specs = [s for s in registry.ordered() if request.entities.get(s.plural)]
    for spec in specs:
        judge = _Judge(spec, request, result, seqs=seqs, tenant_id=tenant_id, now=now)
        await judge.run(
            conn,
            registry,
            request.entities[spec.plural],
            may_defer=defer_last and spec is specs[-1],
        )
    return result


def _check_company(registry: Registry, request: PushRequest, tenant_id: str) -> None:
    """``companyGuid`` in pushed data must name the caller's tenant, as in ``sync``: anything
    else fails the whole push before anything is written."""
    for plural, changes in request.entities.items():
        if not registry.by_plural(plural).company_guid:
            continue
        for kind in KINDS:
            for index, change in enumerate(getattr(changes, kind)):
                guid = (change.data or {}).get("companyGuid")
                if foreign_company(guid, tenant_id):
                    raise Forbidden(
                        f"{plural}.{kind}[{index}].data.companyGuid {guid!r} "
                        "is not the caller's company"
                    )


class _Judge:
    """Decides and applies the changes of one entity."""

    def __init__(
        self,
        spec: EntitySpec,
        request: PushRequest,
        result: PushResult,
        *,
        seqs: SeqAllocator,
        tenant_id: str,
        now: datetime,
    ) -> None:
        self.spec, self.request, self.result = spec, request, result
        self.seqs, self.tenant_id, self.now = seqs, tenant_id, now
        self.rows: dict[str, dict[str, Any]] = {}
        self.dirty: set[str] = set()
        self.stored_aliases: dict[str, str] = {}
        """alias -> id as stored before this push"""
        self.aliases: dict[str, str] = {}
        """alias -> id as this push leaves them so far"""

    async def run(
        self, conn: AsyncConnection, registry: Registry, changes: EntityPush, *, may_defer: bool
    ) -> None:
        ids = self._valid_ids(changes)
        data = await self._prepare_data(conn, registry, changes)
        aliases = {i.values["alias"] for i in data.values() if i and i.values.get("alias")}
        keys = sorted(set(ids.values()))
        alone = locks_table(conn, len(keys) + len(aliases))
        for row in await load_rows(
            conn, self.spec, self.tenant_id, ids=keys, aliases=sorted(aliases)
        ):
            self.rows[row["id"]] = row
            if row["alias"] is not None:
                self.stored_aliases[row["alias"]] = self.aliases[row["alias"]] = row["id"]
        for kind in KINDS:
            for index, change in enumerate(getattr(changes, kind)):
                key = (kind, index)
                if key in ids and key in data:
                    self._judge(kind, index, change, ids[key], data[key])
        await self._release_aliases(conn)
        rows = [self.rows[i] for i in sorted(self.dirty)]
        await write_rows(conn, self.spec, rows, self.seqs, defer=may_defer and alone)
        self.result.changed_ids.setdefault(self.spec.plural, []).extend(sorted(self.dirty))

    def _valid_ids(self, changes: EntityPush) -> dict[tuple[Kind, int], str]:
        ids: dict[tuple[Kind, int], str] = {}
        for kind in KINDS:
            for index, change in enumerate(getattr(changes, kind)):
                canonical = parse_uuid(change.id)
                if canonical is None:
                    self._error(kind, index, change.id, "UNPROCESSABLE", "id", "is not a UUID")
                else:
                    ids[(kind, index)] = canonical
        return ids

    async def _prepare_data(
        self, conn: AsyncConnection, registry: Registry, changes: EntityPush
    ) -> dict[tuple[Kind, int], Item | None]:
        """Normalize and resolve every change's data; deletes need none."""
        prepared: dict[tuple[Kind, int], Item | None] = {}
        for kind in KINDS:
            entries = getattr(changes, kind)
            if kind == "deleted":
                prepared.update({(kind, i): None for i in range(len(entries))})
                continue
            raw = [dict(c.data or {}) for c in entries]
            for item_data in raw:
                item_data.pop("id", None)  # the change's id names the record
            items, errors = normalize_items(self.spec, raw)
            items, ref_errors = await resolve_references(
                conn, registry, self.tenant_id, self.spec, items
            )
            for e in errors + ref_errors:
                self._error(
                    kind,
                    e.index,
                    entries[e.index].id,
                    e.code,
                    f"data.{e.field}" if e.field else "data",
                    e.message,
                )
            prepared.update({(kind, item.index): item for item in items})
        return prepared

    def _judge(self, kind: Kind, index: int, change: Change, id_: str, item: Item | None) -> None:
        row = self.rows.get(id_)
        live = row is not None and row["deleted_at"] is None
        if kind == "deleted":
            if row is None:
                return self._conflict(id_, "NOT_FOUND", None)
            if not live:
                return None  # already deleted: a retried delete is harmless
            if self._loses(change, row):
                return self._conflict(id_, "CHANGED_ON_SERVER", row)
            return self._delete(id_, row, change)
        assert item is not None
        if kind == "inserted" and live:
            assert row is not None
            if same_data(self.spec, row, {**row, **item.values}):
                return None  # a retried insert
            if self.request.policy == "REJECT":
                return self._conflict(id_, "ALREADY_EXISTS", row)
        if kind == "updated" and row is None:
            return self._conflict(id_, "NOT_FOUND", None)
        if row is not None and not live and self._loses(change, row):
            return self._conflict(id_, "DELETED_ON_SERVER", row)
        if live and self._loses(change, row):  # type: ignore[arg-type]
            return self._conflict(id_, "CHANGED_ON_SERVER", row)
        return self._write(kind, index, id_, row, item, change)

    def _loses(self, change: Change, row: dict[str, Any]) -> bool:
        """Whether the server's version wins over this change."""
        if self.request.policy == "LAST_WRITE_WINS":
            stored = aware(row["changed_at"])
            return stored is not None and (change.changed_at or self.now) < stored
        return self._changed_after_base(change, row)

    def _changed_after_base(self, change: Change, row: dict[str, Any]) -> bool:
        if change.base_version is not None:
            return int(row["version"]) > change.base_version
        if self.request.since is not None:
            return int(row["seq"]) > self.request.since
        if self.request.from_date is not None:
            updated = aware(row["updated_at"])
            return updated is not None and updated > self.request.from_date
        return False  # no base at all: a blind write

    def _write(
        self,
        kind: Kind,
        index: int,
        id_: str,
        row: dict[str, Any] | None,
        item: Item,
        change: Change,
    ) -> None:
        live = row is not None and row["deleted_at"] is None
        base = row if live else defaults(self.spec)
        merged = {**base, **item.values, "id": id_}  # type: ignore[dict-item]
        missing = _missing_required(self.spec, merged)
        if missing is not None:
            return self._error(
                kind, index, id_, "UNPROCESSABLE", f"data.{missing}", f"{missing} is required"
            )
        alias = merged.get("alias")
        holder = self.aliases.get(alias) if alias is not None else None
        if holder is not None and holder != id_:
            if self.rows[holder]["deleted_at"] is None:
                message = f"alias {alias!r} belongs to record {holder}, not {id_}"
                return self._error(kind, index, id_, "KEY_MISMATCH", "data.alias", message)
            self.rows[holder] = {**self.rows[holder], "alias": None}  # a tombstone gives it up
        if live and same_data(self.spec, row, merged):  # type: ignore[arg-type]
            return None
        if row is not None and row["alias"] is not None:
            self.aliases.pop(row["alias"], None)
        if alias is not None:
            self.aliases[alias] = id_
        self.rows[id_] = prepare_write(
            self.spec,
            self.seqs,
            tenant_id=self.tenant_id,
            existing=row,
            merged=merged,
            now=self.now,
            changed_at=change.changed_at,
            actor=change.actor,
        )
        self._count(id_)
        return None

    async def _release_aliases(self, conn: AsyncConnection) -> None:
        """Clear the stored alias of every other record whose alias a write takes (a tombstone
        giving it up, or a record that renames itself in this push) before the rows are
        written, since the unique index is checked row by row. Released tombstones need no seq:
        pullers see only their id; the other released rows are rewritten below."""
        released = set()
        for id_ in self.dirty:
            holder = self.stored_aliases.get(self.rows[id_]["alias"] or "")
            if holder is not None and holder != id_:
                released.add(holder)
        if not released:
            return
        t = self.spec.table
        await conn.execute(
            sa.update(t)
            .where(t.c.tenant_id == self.tenant_id, in_values(conn, t.c.id, sorted(released)))
            .values(alias=None)
        )

    def _delete(self, id_: str, row: dict[str, Any], change: Change) -> None:
        self.rows[id_] = {
            **row,
            "deleted_at": self.now,
            "updated_at": self.now,
            "changed_at": change.changed_at or self.now,
            "actor": change.actor,
            "version": int(row["version"]) + 1,
            "seq": self.seqs.take(),
        }
        self._count(id_)

    def _count(self, id_: str) -> None:
        if id_ not in self.dirty:
            self.result.applied += 1
        self.dirty.add(id_)

    def _conflict(self, id_: str, reason: str, row: dict[str, Any] | None) -> None:
        self.result.conflicts.append(
            Conflict(
                entity=self.spec.name,
                id=id_,
                reason=reason,
                server_version=int(row["version"]) if row else None,
                server_record=public_record(self.spec, row) if row else None,
            )
        )

    def _error(self, kind: Kind, index: int, id_: Any, code: str, fld: str, message: str) -> None:
        self.result.errors.append(
            ItemError(
                entity=self.spec.name,
                index=index,
                code=code,
                message=f"{kind}[{index}]: {message}",
                id=id_ if isinstance(id_, str) else None,
                field=f"{kind}.{fld}",
            )
        )


def _missing_required(spec: EntitySpec, merged: dict[str, Any]) -> str | None:
    for f in spec.fields:
        if f.required and merged.get(f.name) is None:
            return camel(f.name)
    for ref in spec.refs:
        if ref.required and not merged.get(ref.column):
            return camel(ref.name)
    return None
