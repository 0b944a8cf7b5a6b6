"""Commit notifications: they only wake listeners; data always comes from the database.

``Broker`` is the in-process fan-out (SQLite, and the local half on PostgreSQL, where a
listener connection feeds NOTIFYs from other processes into the same broker). ``kind`` is
``"changes"`` (the entity feed), ``"actions"`` (the action log) or ``CREDENTIALS``."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

log = logging.getLogger("syncgraph.notify")

CREDENTIALS = "credentials"
"""The kind of a commit that revoked a credential (a removed device): every process's
credential cache forgets what it holds."""

Listener = Callable[[str, str, int], None]
"""``listener(tenant_id, kind, seq)``"""


class Broker:
    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self._all: set[Listener] = set()

    def subscribe(self, tenant_id: str | None, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every commit of the tenant (None: of every tenant)."""
        target = self._all if tenant_id is None else self._listeners[tenant_id]
        target.add(listener)
        return lambda: target.discard(listener)

    def publish(self, tenant_id: str, seq: int, kind: str = "changes") -> None:
        """Runs after the writer's commit: a failing listener is logged, and never turns
        the writer's committed request into an error."""
        for listener in (*self._listeners.get(tenant_id, ()), *self._all):
            try:
                listener(tenant_id, kind, seq)
            except Exception:
                log.exception("a commit listener failed (tenant %s, %s %s)", tenant_id, kind, seq)


class ForeignWrites:
    """Whether another process wrote the database, for the caches of a database whose
    processes are not told of each other's commits (SQLite: ``app.db.others_wrote``, the
    files' stat). Several caches consult one check: each compares the ``generation`` it last
    saw with the current one and forgets what it holds when they differ.

    The check runs at most once per ``FRESH_NS`` (a millisecond): amid requests the files'
    two stat calls cost about 8 µs, 6 % of a ``{ __typename }``, and a busy process asks several
    times a millisecond. A commit of another process is seen by every request that starts a
    millisecond after it; one starting sooner is answered as if it had come a moment
    earlier, before the commit."""

    def __init__(
        self, others_wrote: Callable[[], bool], *, clock: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self._others_wrote = others_wrote
        self._clock = clock
        self._checked: int | None = None
        self.generation = 0

    def current(self) -> int:
        now = self._clock()
        if self._checked is None or now - self._checked >= FRESH_NS:
            self._checked = now
            if self._others_wrote():
                self.generation += 1
        return self.generation


FRESH_NS = 1_000_000
"""How long one look at the database files answers ``ForeignWrites.current`` (ns)."""
