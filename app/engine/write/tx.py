"""The transaction edge every writer goes through: one write transaction per request,
stamped last, notified by the stamping inside the transaction (PostgreSQL delivers a NOTIFY
at COMMIT) and published to this process's hubs after the commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import write_transaction
from app.engine import idempotency
from app.engine.idempotency import KeyedRequest, Parked
from app.engine.live.notify import CREDENTIALS, Broker
from app.engine.write.seq import SeqAllocator, current_seq, stamp

if TYPE_CHECKING:
    from app.engine.write.guard import ViewGuard

Ending = Literal["commit", "discard", "rehearse"]


@dataclass
class WriteTx:
    """One writer's transaction: its connection, its placeholder seqs and its clock."""

    conn: AsyncConnection
    tenant_id: str
    seqs: SeqAllocator
    now: datetime
    checkpoint: int = 0
    """The feed position after the transaction (set on exit; unchanged when discarded)."""
    actions: int = 0
    """Action-log entries this transaction stored with placeholder positions."""
    action_seq: int = 0
    revokes: bool = False
    """The transaction revoked a credential: this process's cache forgets after the commit
    (before it, a lookup could still prove the credential and cache it again)."""
    ending: Ending = field(default="commit")
    guard: ViewGuard | None = None
    """The writer's view (``app.engine.write.guard``); None: the whole tenant."""

    def discard(self) -> None:
        """Roll back on exit and notify nobody (an atomic push that was refused)."""
        self.ending = "discard"

    def rehearse(self) -> None:
        """Roll back on exit after writing a deferred batch, so that a dry run fails (or
        not) exactly as the real write would."""
        self.ending = "rehearse"

    @property
    def committed(self) -> bool:
        return self.ending == "commit"

    @property
    def previous(self) -> int:
        """The feed position just before this transaction's changes (after exit): every
        number between it and ``checkpoint`` is this transaction's own."""
        return self.checkpoint - self.seqs.count if self.committed else self.checkpoint


@asynccontextmanager
async def open_write(
    engine: AsyncEngine,
    broker: Broker,
    tenant_id: str,
    *,
    now: datetime | None = None,
    guard: ViewGuard | None = None,
) -> AsyncIterator[WriteTx]:
    """``async with open_write(...) as tx``: the block writes through ``tx.conn`` with
    ``tx.seqs``; on a clean exit the changes are stamped, notified, committed and published
    (or rolled back, when the block called ``discard``/``rehearse``). An exception rolls back.

    Inside a request sent with an ``Idempotency-Key`` (``idempotency.keyed_request``) the
    commit waits for the request's answer, which is stored in the same transaction.
    ``guard``: the writer's view, checked by the policies (``app.engine.write.guard``)."""
    keyed = idempotency.current(tenant_id)
    if keyed is not None:
        async with _keyed_write(engine, broker, keyed, now=now, guard=guard) as tx:
            yield tx
        return
    async with write_transaction(engine) as conn:
        seqs = SeqAllocator(tenant_id)
        tx = WriteTx(conn, tenant_id, seqs, now or datetime.now(UTC), guard=guard)
        yield tx
        if not tx.committed:
            await _before_roll_back(tx)
            await tx.conn.rollback()
            return
        await _stamp(tx)
    _publish(broker, tx)


@asynccontextmanager
async def _keyed_write(
    engine: AsyncEngine,
    broker: Broker,
    keyed: KeyedRequest,
    *,
    now: datetime | None,
    guard: ViewGuard | None,
) -> AsyncIterator[WriteTx]:
    """One writer inside a keyed request's parked transaction, under a savepoint of its
    own (so that a refused or failed writer leaves the key and the other writers alone);
    the commit and the publishing wait for ``idempotency.settle``."""
    parked = keyed.parked or await _park(engine, keyed)
    savepoint = await parked.conn.begin_nested()
    seqs = SeqAllocator(keyed.tenant_id)
    tx = WriteTx(parked.conn, keyed.tenant_id, seqs, now or datetime.now(UTC), guard=guard)
    try:
        yield tx
        if tx.committed:
            await _stamp(tx)
        else:
            await _before_roll_back(tx)
    except BaseException:
        await savepoint.rollback()
        raise
    if not tx.committed:
        await savepoint.rollback()
        return
    await savepoint.commit()
    parked.wrote = True
    parked.after_commit.append(lambda: _publish(broker, tx))


async def _park(engine: AsyncEngine, keyed: KeyedRequest) -> Parked:
    """Open the keyed request's transaction and take its key first."""
    stack = AsyncExitStack()
    conn = await stack.enter_async_context(write_transaction(engine))
    try:
        await idempotency.take_key(conn, keyed)
    except BaseException as exc:
        await stack.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    keyed.parked = Parked(stack, conn)
    return keyed.parked


async def _before_roll_back(tx: WriteTx) -> None:
    if tx.ending == "rehearse":
        await tx.seqs.flush(tx.conn)
    tx.checkpoint = await current_seq(tx.conn, tx.tenant_id)


async def _stamp(tx: WriteTx) -> None:
    """Number the changes, then the actions (both take the tenant's counter row, last);
    each announces its own seq to other processes."""
    from app.engine.devices.actions import stamp_actions  # the action log builds on the write road

    tx.checkpoint = await stamp(tx.conn, tx.seqs)
    if tx.actions:
        tx.action_seq = await stamp_actions(tx.conn, tx.tenant_id, tx.actions)


def _publish(broker: Broker, tx: WriteTx) -> None:
    if tx.seqs.count:
        broker.publish(tx.tenant_id, tx.checkpoint)
    if tx.actions:
        broker.publish(tx.tenant_id, tx.action_seq, kind="actions")
    if tx.revokes:
        broker.publish(tx.tenant_id, 0, kind=CREDENTIALS)
