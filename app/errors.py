"""One error hierarchy with stable codes. Only the GraphQL layer maps them to responses."""

from __future__ import annotations


class SyncError(Exception):
    """Base of every expected error; ``code`` becomes ``extensions.code``."""

    code = "BAD_REQUEST"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(SyncError):
    code = "BAD_REQUEST"


class Unauthenticated(SyncError):
    code = "UNAUTHENTICATED"


class Forbidden(SyncError):
    code = "FORBIDDEN"


class NotFound(SyncError):
    code = "NOT_FOUND"


class BatchTooLarge(SyncError):
    code = "BATCH_TOO_LARGE"

    def __init__(self, entity: str, size: int, limit: int) -> None:
        super().__init__(f"{entity}: {size} items, the limit is {limit}")
        self.entity, self.size, self.limit = entity, size, limit


class IdempotencyKeyReused(SyncError):
    code = "IDEMPOTENCY_KEY_REUSED"


class StartupError(Exception):
    """The configuration stops the start, before anything is written: an entity module
    that does not load, a migration missing or out of reach. The message names the culprit
    and the fix; the CLI prints it alone (the traceback with ``--debug``) and exits with 2."""
