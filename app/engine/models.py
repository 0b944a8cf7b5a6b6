"""Tables the engine owns: tenants and their change counters, API keys, and the sync fields
every entity table carries."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import JSONType

_NOW = {"server_default": sa.func.current_timestamp()}


def utcnow() -> datetime:
    return datetime.now(UTC)


class IdempotencyKey(SQLModel, table=True):
    """A mutation's stored response, replayed for a retry with the same key."""

    __tablename__ = "idempotency_keys"

    tenant_id: str = Field(primary_key=True, max_length=36, foreign_key="tenants.id")
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    response: dict[str, object] | None = Field(default=None, sa_type=sa.JSON)
    """None while the first request is still running."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=255)
    seq: int = Field(default=0, sa_type=sa.BigInteger)
    """The tenant's change counter: the seq of its latest committed change."""
    purged_seq: int = Field(default=0, sa_type=sa.BigInteger)
    action_seq: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    """The tenant's action-log counter: the position of its latest stored action."""
    """Tombstones up to this seq were purged: an older checkpoint needs a full sync."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=36)
    tenant_id: str | None = Field(default=None, foreign_key="tenants.id", index=True, max_length=36)
    key_hash: str = Field(max_length=64, unique=True)
    scopes: list[str] = Field(default_factory=list, sa_type=JSONType)
    system: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    view: dict[str, object] | None = Field(default=None, sa_type=JSONType)
    """The view the key is bound to (``{"name", "params"}``); None: the whole tenant."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class SyncRow(SQLModel):
    """The sync fields of every entity table (not a table itself)."""

    tenant_id: str = Field(primary_key=True, max_length=36, foreign_key="tenants.id")
    id: str = Field(primary_key=True, max_length=36)
    alias: str | None = Field(default=None, max_length=255)
    # Server defaults too, so that rows written behind the server's back (then repaired
    # with ``resync``) are valid.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=sa.DateTime(timezone=True), sa_column_kwargs=_NOW
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=sa.DateTime(timezone=True), sa_column_kwargs=_NOW
    )
    changed_at: datetime = Field(
        default_factory=utcnow, sa_type=sa.DateTime(timezone=True), sa_column_kwargs=_NOW
    )
    """Time of the last change as the client said (LAST_WRITE_WINS compares it)."""
    actor: str | None = Field(default=None, max_length=255)
    seq: int = Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})
    created_seq: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    deleted_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class Device(SQLModel, table=True):
    """A registered device: its token is a credential (stored hashed); its secret signs
    actions (stored, since the server must verify HMACs with it)."""

    __tablename__ = "devices"

    id: str = Field(primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36)
    name: str = Field(max_length=255)
    token_hash: str = Field(max_length=64, unique=True)
    secret: str = Field(max_length=128)
    last_sequence: int = Field(default=-1, sa_type=sa.BigInteger)
    """The highest accepted sequence number (-1: none yet)."""
    view: dict[str, object] | None = Field(default=None, sa_type=JSONType)
    """The view the device is bound to; None: the whole tenant."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    removed_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class Action(SQLModel, table=True):
    """One accepted action of the tenant's log, in ``seq`` order."""

    __tablename__ = "actions"
    __table_args__ = (
        sa.UniqueConstraint("device_id", "sequence_number", name="uq_actions_device_sequence"),
        sa.Index("ix_actions_tenant_seq", "tenant_id", "seq"),
    )

    id: str = Field(primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=36)
    device_id: str = Field(foreign_key="devices.id", max_length=36)
    sequence_number: int = Field(sa_type=sa.BigInteger)
    type: str = Field(max_length=255)
    payload: dict[str, object] = Field(sa_type=sa.JSON)
    received_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    seq: int = Field(sa_type=sa.BigInteger)
    binding: str | None = Field(default=None, max_length=64)
    """The pushing credential's view binding (its key): view-bound readers of the log see
    only the actions of their own binding."""


class ViewSet(SQLModel, table=True):
    """What a view-bound client holds at a checkpoint: the ids of the records it was sent,
    by collection, stored once per distinct set (the checkpoint names it by its hash). Rows
    named ``answers:<hash>`` note, per checkpoint, what answers from it moved (see
    ``app.engine.views.pull``)."""

    __tablename__ = "view_sets"

    tenant_id: str = Field(primary_key=True, max_length=36, foreign_key="tenants.id")
    id: str = Field(primary_key=True, max_length=40)
    ids: dict[str, list[str]] = Field(sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
