"""Each tenant's latest seq as this process last heard it, so that an idle poll — the commonest
request of a sync server — is answered without a database round trip.

Only where every commit is heard (PostgreSQL: this process publishes its own commits, and the
LISTEN connection brings every other process's): ``enable`` is called once the listener runs,
and ``forget`` whenever notifications may have been lost (a reconnect). A value is used only
to say "nothing after ``since``" when ``since`` equals it, which is always a safe answer (a
client repeating its checkpoint loses nothing); a value the database confirmed more than
``ttl`` seconds ago is read again, so a notification lost without a reconnect delays news by
at most ``ttl``. SQLite databases can be written by another process (``syncgraph import``)
that notifies nobody: there a ``ForeignWrites`` watch (the files' stat) says when another
process may have written, and everything kept is forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.engine.live.notify import CREDENTIALS, ForeignWrites


class LatestSeqs:
    def __init__(self, ttl: float = 1.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self.enabled = False
        self._seen: dict[str, tuple[int, float]] = {}
        """tenant -> (latest seq heard or read, when the database last confirmed it)"""
        self.watch: ForeignWrites | None = None
        self._generation = 0

    def enable(self, watch: ForeignWrites | None = None) -> None:
        """Start keeping seqs; ``watch``: where other processes' commits are not heard
        (SQLite), what tells that one may have happened."""
        self.enabled, self.watch = True, watch

    def forget(self) -> None:
        self._seen.clear()

    def is_latest(self, tenant_id: str, seq: int) -> bool:
        """Whether ``seq`` is the tenant's latest, as heard within ``ttl`` of a confirmation."""
        entry = self._seen.get(tenant_id)
        return entry is not None and entry[0] == seq and self.clock() - entry[1] < self.ttl

    def confirm(self, tenant_id: str, seq: int) -> None:
        """The database's counter, just read (never lowers what was heard since)."""
        if not self.enabled:
            return
        entry = self._seen.get(tenant_id)
        self._seen[tenant_id] = (max(seq, entry[0]) if entry else seq, self.clock())

    def on_commit(self, tenant_id: str, kind: str, seq: int) -> None:
        """The broker's listener: a commit of the tenant's feed (this or another process)."""
        if kind == CREDENTIALS or kind == "actions":
            return
        entry = self._seen.get(tenant_id)
        if entry is not None and seq > entry[0]:
            self._seen[tenant_id] = (seq, entry[1])
