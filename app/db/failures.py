"""Which database failures are the database's state rather than a bug: the one place that
reads driver error codes (PostgreSQL's SQLSTATE, SQLite's messages) for the request edge."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator

import sqlalchemy.exc

_UNAVAILABLE_SQLSTATES = ("08", "57P", "57014", "53")
"""PostgreSQL classes meaning "the database cannot serve you now": connection exceptions,
operator intervention (shutdown, cannot connect now, a statement cancelled by the statement
timeout), insufficient resources (too many connections)."""
_UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})
"""Character not in repertoire (a NUL in text), untranslatable character (``\\u0000`` in
JSON): the client's text, not the server, is at fault."""
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database", "disk i/o error")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and the driver errors SQLAlchemy wraps."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        one = todo.pop()
        if one is None or id(one) in seen:
            continue
        seen.add(id(one))
        yield one
        orig = getattr(one, "orig", None)
        todo += [one.__cause__, one.__context__, orig if isinstance(orig, BaseException) else None]


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or "")


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception means the database cannot be reached or refuses work for now
    (so the request may simply be retried later), as opposed to a bug or bad input."""
    for one in _chain(exc):
        state = _sqlstate(one)
        if state.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        if state == "55000" and "accepting connections" in str(one):
            return True  # ALLOW_CONNECTIONS false: "database … is not currently accepting"
        if isinstance(one, sqlalchemy.exc.DBAPIError) and one.connection_invalidated:
            return True
        if isinstance(one, OSError | asyncio.TimeoutError | sqlalchemy.exc.TimeoutError):
            return True  # refused or unreachable socket, connect timeout, pool exhausted
        if isinstance(one, sqlite3.OperationalError) and str(one).lower().startswith(
            _SQLITE_UNAVAILABLE
        ):
            return True
    return False


def is_unstorable_text(exc: BaseException) -> bool:
    """Whether the database refused a string of the request (a NUL character)."""
    return any(_sqlstate(one) in _UNSTORABLE_TEXT_SQLSTATES for one in _chain(exc))
