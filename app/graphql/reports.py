"""Result types that do not depend on an entity's fields."""

from __future__ import annotations

import enum
from typing import Any

import strawberry
from strawberry.scalars import JSON


@strawberry.enum(description="What happened to a cleanSync request.")
class CleanSyncOutcome(enum.Enum):
    APPLIED = "APPLIED"
    SKIPPED_ITEM_ERRORS = "SKIPPED_ITEM_ERRORS"
    REFUSED_MASS_DELETE = "REFUSED_MASS_DELETE"


@strawberry.enum(description="Why a pushed change was not applied.")
class ConflictReason(enum.Enum):
    CHANGED_ON_SERVER = "CHANGED_ON_SERVER"
    DELETED_ON_SERVER = "DELETED_ON_SERVER"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    NOT_FOUND = "NOT_FOUND"


@strawberry.enum(description="How a push resolves a conflict.")
class ConflictPolicy(enum.Enum):
    REJECT = "REJECT"
    LAST_WRITE_WINS = "LAST_WRITE_WINS"


@strawberry.type(name="ResyncResult")
class ResyncResultType:
    """The GraphQL face of ``app.engine.write.resync.ResyncResult``."""

    checkpoint: str
    resynced: int
    not_found: list[strawberry.ID]


@strawberry.type
class SyncCounts:
    inserted: int
    updated: int
    unchanged: int
    deleted: int
    failed: int


def entity_enum(names: list[str]) -> Any:
    py_enum = enum.Enum("Entity", {n: n for n in names})  # type: ignore[misc]
    return strawberry.enum(py_enum, description="The entities this server syncs.")


def item_error_type(entity_type: Any) -> type:
    cls = type(
        "ItemError",
        (),
        {
            "__annotations__": {
                "entity": entity_type,
                "index": int,
                "id": strawberry.ID | None,
                "alias": str | None,
                "field": str | None,
                "code": str,
                "message": str,
            }
        },
    )
    return strawberry.type(cls, description="Why one input item was not applied.")


def entity_sync_result_type(item_error: type) -> type:
    cls = type(
        "EntitySyncResult",
        (),
        {
            "__annotations__": {
                "inserted": int,
                "updated": int,
                "unchanged": int,
                "deleted": int,
                "failed": int,
                "ids": list[strawberry.ID | None],
                "deleted_ids": list[strawberry.ID],
                "clean_sync": CleanSyncOutcome | None,
                "errors": list[item_error],  # type: ignore[valid-type]
            }
        },
    )
    return strawberry.type(cls)


def conflict_type(entity_type: Any) -> type:
    cls = type(
        "Conflict",
        (),
        {
            "__annotations__": {
                "entity": entity_type,
                "id": strawberry.ID,
                "reason": ConflictReason,
                "server_version": int | None,
                "server_record": JSON | None,
            }
        },
    )
    return strawberry.type(
        cls, description="A change the server kept its own version for; serverRecord shows it."
    )


def push_report_type(conflict: type, item_error: type) -> type:
    cls = type(
        "PushReport",
        (),
        {
            "__annotations__": {
                "checkpoint": str,
                "applied": int,
                "conflicts": list[conflict],  # type: ignore[valid-type]
                "errors": list[item_error],  # type: ignore[valid-type]
                "caught_up": bool,
            },
            "caught_up": strawberry.field(
                description="True when the push carried `since` and no other write committed "
                "after that checkpoint before this push: take `checkpoint` as the next `since`, "
                "and your own changes never come back as echoes."
            ),
        },
    )
    return strawberry.type(cls)
