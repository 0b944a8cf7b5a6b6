"""Writing through a view (DESIGN.md §8): a view-bound writer may touch only records its view
shows before the write (when they exist) and after it. Any other item fails with
``OUT_OF_VIEW`` and writes nothing; the other items go on.

Before: the view is evaluated once, and an item naming (by id or alias) a live record it
does not show is refused at once (``RowSet.out_of_view``), before any conflict could show the
record's data. After: the request is applied inside a savepoint and the view evaluated again;
when a record written live is not visible, the savepoint is rolled back and the request
applied again with the items that last wrote such records refused, until every written record
is visible (each round refuses at least one more item, so it ends). An unbound writer has no
guard and pays nothing: no evaluation, no savepoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from app.engine.registry import Registry
from app.engine.views.spec import Binding, View
from app.engine.views.visible import visible

if TYPE_CHECKING:
    from app.engine.write.tx import WriteTx

OUT_OF_VIEW = "OUT_OF_VIEW"
OUT_OF_VIEW_MESSAGE = (
    "outside this credential's view: it may write only records its view shows, "
    "before and after the write"
)
"""One message for both sides, so that a refusal does not tell an invisible record's
existence from a record that would not be visible."""

Result = TypeVar("Result")
Key = tuple[str, Hashable]
"""(collection, the item as its policy names it: an index, a (kind, index)...)"""


@dataclass
class ViewGuard:
    """The view a writer is bound to, and what one guarded request has learned of it."""

    registry: Registry
    binding: Binding
    before: dict[str, set[str]] = field(default_factory=dict)
    """By collection: the ids the view showed before the request."""
    written: dict[tuple[str, str], Hashable] = field(default_factory=dict)
    """(collection, id) of each record this attempt left live -> the item that wrote it last."""
    refused: set[Key] = field(default_factory=set)
    """Items whose write left the view in an earlier attempt."""

    @property
    def view(self) -> View:
        return self.registry.views[self.binding.name]

    def hides(self, plural: str, id_: str) -> bool:
        """Whether the view did not show this (live) record before the request."""
        return id_ not in self.before.get(plural, ())

    def refuses(self, plural: str, item: Hashable) -> bool:
        return (plural, item) in self.refused

    def wrote(self, plural: str, id_: str, item: Hashable, *, live: bool) -> None:
        """Note a change of a record; a tombstone needs no check after (no view shows it)."""
        if live:
            self.written[(plural, id_)] = item
        else:
            self.written.pop((plural, id_), None)


async def through_view(
    tx: WriteTx, plurals: set[str], apply: Callable[[], Awaitable[Result]]
) -> Result:
    """Run ``apply`` (one request of a policy, writing ``plurals`` through ``tx``) so that it
    writes only what ``tx.guard``'s view shows before and after; without a guard, just run it."""
    guard = tx.guard
    if guard is None:
        return await apply()
    guard.before = await _visible_ids(tx, guard, plurals)
    guard.refused = set()
    while True:
        async with tx.conn.begin_nested() as savepoint:
            mark = tx.seqs.mark()
            guard.written = {}
            result = await apply()
            escaped = await _escaped(tx, guard)
            if not escaped:
                return result
            await savepoint.rollback()
            tx.seqs.rewind(mark)
            guard.refused |= escaped


async def _escaped(tx: WriteTx, guard: ViewGuard) -> set[Key]:
    """The items whose records are live and not visible now (as this transaction sees them)."""
    if not guard.written:
        return set()
    after = await _visible_ids(tx, guard, {plural for plural, _ in guard.written})
    return {
        (plural, item)
        for (plural, id_), item in guard.written.items()
        if id_ not in after.get(plural, ())
    }


async def _visible_ids(tx: WriteTx, guard: ViewGuard, plurals: set[str]) -> dict[str, set[str]]:
    seen = await visible(
        tx.conn, guard.registry, tx.tenant_id, guard.view, guard.binding, only=plurals
    )
    return {plural: seen.ids(plural) for plural in plurals}
