"""Commit notifications: they only wake listeners; data always comes from the database.

``Broker`` is the in-process fan-out (SQLite, and the local half on PostgreSQL, where a
listener connection feeds NOTIFYs from other processes into the same broker)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

Listener = Callable[[str, int], None]


class Broker:
    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self._all: set[Listener] = set()

    def subscribe(self, tenant_id: str | None, listener: Listener) -> Callable[[], None]:
        """Call ``listener(tenant_id, seq)`` on every commit of the tenant (None: all)."""
        target = self._all if tenant_id is None else self._listeners[tenant_id]
        target.add(listener)
        return lambda: target.discard(listener)

    def publish(self, tenant_id: str, seq: int) -> None:
        for listener in (*self._listeners.get(tenant_id, ()), *self._all):
            listener(tenant_id, seq)


class SeqWaiter:
    """Await the next commit of one tenant (used by tests and simple consumers)."""

    def __init__(self, broker: Broker, tenant_id: str) -> None:
        self.event = asyncio.Event()
        self.seq = 0
        self._unsubscribe = broker.subscribe(tenant_id, self._on)

    def _on(self, _tenant: str, seq: int) -> None:
        self.seq = max(self.seq, seq)
        self.event.set()

    def close(self) -> None:
        self._unsubscribe()
