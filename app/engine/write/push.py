"""Client push (back-sync): apply offline edits with conflict detection.

Push's policy on the write road (``app.engine.write``): per entity (in dependency order) the
rows a push names are loaded once; each change is then judged (REJECT or LAST_WRITE_WINS)
against the record as the earlier changes left it (so several changes to one record apply in
order), and the changed rows are written with one statement per entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import locks_table
from app.engine.registry import EntitySpec, Registry
from app.engine.values import ID_RULE, parse_id
from app.engine.write.guard import OUT_OF_VIEW, OUT_OF_VIEW_MESSAGE, through_view
from app.engine.write.items import Item, ItemError, foreign_company, normalize_items
from app.engine.write.references import resolve_references
from app.engine.write.rows import (
    aware,
    defaults,
    load_rows,
    missing_required,
    public_record,
    same_data,
)
from app.engine.write.rowset import RowSet
from app.engine.write.tx import WriteTx
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
    caught_up: bool = False
    """The push carried ``since`` and no other write committed after it before this push:
    ``checkpoint`` may be the client's next ``since`` (its own changes never come back)."""
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
    tx: WriteTx, registry: Registry, request: PushRequest, *, defer_last: bool = False
) -> PushResult:
    """Apply a push inside the writer's transaction (stamped by its edge). With ``atomic`` the
    caller discards the transaction when the result has any conflict or error. ``defer_last``:
    the edge stamps next (see ``apply_sync``). A view-bound writer's changes go through its
    view (``through_view``)."""
    _check_company(registry, request, tx.tenant_id)
    specs = [s for s in registry.ordered() if request.entities.get(s.plural)]

    async def apply() -> PushResult:
        result = PushResult()
        for spec in specs:
            judge = _Judge(spec, request, result, tx)
            await judge.run(
                registry, request.entities[spec.plural], may_defer=defer_last and spec is specs[-1]
            )
        return result

    return await through_view(tx, {s.plural for s in specs}, apply)


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
    """Push's policy (REJECT or LAST_WRITE_WINS) for the changes of one entity: each change is
    judged against the record as the earlier changes of the push left it."""

    def __init__(
        self, spec: EntitySpec, request: PushRequest, result: PushResult, tx: WriteTx
    ) -> None:
        self.spec, self.request, self.result, self.tx = spec, request, result, tx
        self.now = tx.now
        self.rows = RowSet(spec, tx)
        self.guarded = self.rows.guarded

    async def run(self, registry: Registry, changes: EntityPush, *, may_defer: bool) -> None:
        conn, tenant_id = self.tx.conn, self.tx.tenant_id
        ids = self._valid_ids(changes)
        data = await self._prepare_data(conn, registry, changes)
        aliases = {i.values["alias"] for i in data.values() if i and i.values.get("alias")}
        keys = sorted(set(ids.values()))
        alone = locks_table(conn, len(keys) + len(aliases))
        self.rows.adopt(
            await load_rows(conn, self.spec, tenant_id, ids=keys, aliases=sorted(aliases))
        )
        for kind in KINDS:
            for index, change in enumerate(getattr(changes, kind)):
                key = (kind, index)
                if key in ids and key in data:
                    self._judge(kind, index, change, ids[key], data[key])
        await self.rows.write(defer=may_defer and alone)
        self.result.changed_ids.setdefault(self.spec.plural, []).extend(sorted(self.rows.dirty))

    def _valid_ids(self, changes: EntityPush) -> dict[tuple[Kind, int], str]:
        ids: dict[tuple[Kind, int], str] = {}
        for kind in KINDS:
            for index, change in enumerate(getattr(changes, kind)):
                canonical = parse_id(change.id)
                if canonical is None:
                    self._error(
                        kind, index, change.id, "UNPROCESSABLE", "id", f"is not an id ({ID_RULE})"
                    )
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
                conn, registry, self.tx.tenant_id, self.spec, items
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
        """WatermelonDB's backend rules: deleting a record that does not exist (or no longer
        does) is a no-op; a create of an existing id is judged as an update with the same
        base, unless ``baseVersion: 0`` says the record must not exist yet. A view-bound
        writer's change is judged only after its view's check (no conflict shows a record out of
        the view)."""
        if self.guarded and self._out_of_view(kind, index, id_, item):
            return self._error(kind, index, id_, OUT_OF_VIEW, "id", OUT_OF_VIEW_MESSAGE)
        row = self.rows.get(id_)
        live = row is not None and row["deleted_at"] is None
        if kind == "deleted":
            if not live:
                return None
            assert row is not None
            if self._loses(change, row):
                return self._conflict(id_, "CHANGED_ON_SERVER", row)
            return self._delete(index, id_, row, change)
        assert item is not None
        if kind == "inserted" and live:
            assert row is not None
            if same_data(self.spec, row, {**row, **item.values}):
                return None  # a retried create
            if change.base_version == 0:
                return self._conflict(id_, "ALREADY_EXISTS", row)
        if kind == "updated" and row is None:
            return self._conflict(id_, "NOT_FOUND", None)
        if row is not None and not live and self._loses(change, row):
            return self._conflict(id_, "DELETED_ON_SERVER", row)
        if live and self._loses(change, row):  # type: ignore[arg-type]
            return self._conflict(id_, "CHANGED_ON_SERVER", row)
        return self._write(kind, index, id_, row, item, change)

    def _out_of_view(self, kind: Kind, index: int, id_: str, item: Item | None) -> bool:
        """The view's check of a change: the record it names, and the one holding its alias."""
        alias = item.values.get("alias") if item is not None else None
        holder = self.rows.stored_aliases.get(alias) if isinstance(alias, str) else None
        return self.rows.out_of_view((kind, index), id_, holder)

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
        missing = missing_required(self.spec, merged)
        if missing is not None:
            return self._error(
                kind, index, id_, "UNPROCESSABLE", f"data.{missing}", f"{missing} is required"
            )
        alias = merged.get("alias")
        holder = self.rows.holder(alias) if alias is not None else None
        if holder is not None and holder["id"] != id_ and holder["deleted_at"] is None:
            message = f"alias {alias!r} belongs to record {holder['id']}, not {id_}"
            return self._error(kind, index, id_, "KEY_MISMATCH", "data.alias", message)
        if live and same_data(self.spec, row, merged):  # type: ignore[arg-type]
            return None
        self._count(id_)
        self.rows.put(
            row, merged, changed_at=change.changed_at, actor=change.actor, item=(kind, index)
        )
        return None

    def _delete(self, index: int, id_: str, row: dict[str, Any], change: Change) -> None:
        self._count(id_)
        self.rows.delete(
            row, changed_at=change.changed_at, actor=change.actor, item=("deleted", index)
        )

    def _count(self, id_: str) -> None:
        if id_ not in self.rows.dirty:
            self.result.applied += 1

    def _conflict(self, id_: str, reason: str, row: dict[str, Any] | None) -> None:
        shown = self.rows.shown(row) if row else None
        self.result.conflicts.append(
            Conflict(
                entity=self.spec.name,
                id=id_,
                reason=reason,
                server_version=int(row["version"]) if row else None,
                server_record=public_record(self.spec, shown) if shown else None,
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
