"""The rows one entity's writes name, loaded once and changed in memory as a writer's policy
decides, then written with one statement: the part of the write road that sync, pushChanges,
the entity actions and import share.

Every change of a record goes through ``RowSet.put`` or ``RowSet.delete``: a rule about what
a transaction may write belongs there. So does a view-bound writer's check
(``app.engine.write.guard``): the policy asks ``out_of_view`` before judging an item, and
``put``/``delete`` note which item left each record live, for the check after.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import sqlalchemy as sa

from app.db import in_values
from app.engine.registry import EntitySpec
from app.engine.write.rows import write_columns, write_rows
from app.engine.write.tx import WriteTx

Row = dict[str, Any]


class RowSet:
    """The stored rows a batch names (by id), the records as the transaction leaves them,
    and which aliases its writes take from other rows."""

    def __init__(self, spec: EntitySpec, tx: WriteTx, rows: list[Row] = ()) -> None:  # type: ignore[assignment]
        self.spec, self.tx = spec, tx
        self.stored: dict[str, Row] = {}
        self.rows: dict[str, Row] = {}
        """By id: the stored rows, then each record as the last change left it."""
        self.stored_aliases: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        """alias -> id as the transaction leaves them so far"""
        self.dirty: dict[str, Row] = {}
        """By id, in the order first changed: the rows to write."""
        self.adopt(rows)

    def adopt(self, rows: list[Row]) -> None:
        """Add stored rows read after the set was made (rows it holds already are kept)."""
        for row in rows:
            id_ = row["id"]
            if id_ in self.stored:
                continue
            self.stored[id_] = self.rows[id_] = row
            alias = row["alias"]
            if alias is not None:
                self.stored_aliases[alias] = self.aliases[alias] = id_

    @property
    def guarded(self) -> bool:
        """Whether the writer is bound to a view (``out_of_view`` has something to say)."""
        return self.tx.guard is not None

    def out_of_view(self, item: Hashable, *ids: str | None) -> bool:
        """Whether a view-bound writer may not write ``item``: a stored record it names (by
        id or alias: ``ids``) is live and its view did not show it before the request, or an
        earlier attempt of the request found the item's write outside the view after."""
        guard = self.tx.guard
        if guard is None:
            return False
        plural = self.spec.plural
        if guard.refuses(plural, item):
            return True
        for id_ in ids:
            row = self.stored.get(id_) if id_ is not None else None
            if row is not None and row["deleted_at"] is None and guard.hides(plural, row["id"]):
                return True
        return False

    def shown(self, row: Row) -> Row | None:
        """``row`` if the writer may see its data in a conflict: a view-bound writer is
        shown no tombstone's (no view shows a deleted record; it may never have been in this
        one), and every live record it reaches passed ``out_of_view`` already."""
        if self.tx.guard is not None and row["deleted_at"] is not None:
            return None
        return row

    def get(self, id_: str) -> Row | None:
        return self.rows.get(id_)

    def holder(self, alias: str) -> Row | None:
        """The record holding ``alias`` now, as far as this set knows."""
        id_ = self.aliases.get(alias)
        return None if id_ is None else self.rows[id_]

    def put(
        self,
        existing: Row | None,
        record: Row,
        *,
        changed_at: Any = None,
        actor: str | None = None,
        item: Hashable = None,
    ) -> Row:
        """Write ``record`` (the whole record after the change, completed in place) over
        ``existing`` (its current row; None for a new record). A tombstone holding the
        record's alias gives it up (the policy has refused a live holder already). ``item``:
        the policy's name for the item making the change (for a view's check)."""
        tx = self.tx
        row = write_columns(
            record,
            existing,
            tx.seqs.take(),
            tx.tenant_id,
            tx.now,
            changed_at=changed_at,
            actor=actor,
        )
        self._set(existing, row, item)
        return row

    def delete(
        self, row: Row, *, changed_at: Any = None, actor: str | None = None, item: Hashable = None
    ) -> Row:
        """Tombstone a live record: it stays, deleted, for pullers to learn of it."""
        now = self.tx.now
        tombstone = {
            **row,
            "tenant_id": self.tx.tenant_id,
            "deleted_at": now,
            "updated_at": now,
            "changed_at": changed_at or now,
            "actor": actor,
            "version": int(row["version"]) + 1,
            "seq": self.tx.seqs.take(),
        }
        self._set(row, tombstone, item)
        return tombstone

    def _set(self, before: Row | None, row: Row, item: Hashable) -> None:
        id_ = row["id"]
        if self.tx.guard is not None:
            self.tx.guard.wrote(self.spec.plural, id_, item, live=row["deleted_at"] is None)
        old = before["alias"] if before is not None else None
        if old is not None and old != row["alias"] and self.aliases.get(old) == id_:
            del self.aliases[old]
        alias = row["alias"]
        if alias is not None:
            holder = self.aliases.get(alias)
            if holder is not None and holder != id_:
                self.rows[holder] = {**self.rows[holder], "alias": None}
            self.aliases[alias] = id_
        self.rows[id_] = self.dirty[id_] = row

    async def write(self, *, defer: bool = False) -> None:
        """Release the stored aliases the changed rows take (the unique index is checked row
        by row), then write every changed row with one statement. ``defer``: leave the write to
        the stamp (see ``SeqAllocator.defer``), unless a view's check reads the rows after."""
        released = self._released()
        if released:
            await self._release(released)
        stored = {k: v for k, v in self.stored.items() if k not in released}
        await write_rows(
            self.tx.conn,
            self.spec,
            list(self.dirty.values()),
            self.tx.seqs,
            defer=defer and self.tx.guard is None,
            stored=stored,
        )

    def _released(self) -> set[str]:
        """Rows whose stored alias a changed row takes: a tombstone giving it up, or a record
        renamed earlier in the transaction (rewritten itself, then)."""
        released = set()
        for id_, row in self.dirty.items():
            holder = self.stored_aliases.get(row["alias"]) if row["alias"] is not None else None
            if holder is not None and holder != id_:
                released.add(holder)
        return released

    async def _release(self, ids: set[str]) -> None:
        """Pullers see only a tombstone's id, so clearing its alias needs no seq."""
        t = self.spec.table
        conn = self.tx.conn
        await conn.execute(
            sa.update(t)
            .where(t.c.tenant_id == self.tx.tenant_id, in_values(conn, t.c.id, sorted(ids)))
            .values(alias=None)
        )
