"""Date and DateTime as clients send them: ISO 8601 (and dd/mm/yyyy for dates), UTC out."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import strawberry
from graphql import StringValueNode, ValueNode
from strawberry.types.scalar import ScalarDefinition

from app.engine.values import parse_date


def _serialize_date(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _parse_date(value: Any) -> Any:
    # A value in neither format passes through; the engine reports it as an item error
    # (with its index and field) instead of failing the whole bulk request.
    parsed = parse_date(value)
    return parsed if parsed is not None else value


def _parse_date_literal(node: ValueNode, _variables: Any = None) -> Any:
    if isinstance(node, StringValueNode):
        return _parse_date(node.value)
    raise ValueError("Date literals are strings: YYYY-MM-DD or dd/mm/yyyy")


def serialize_datetime(value: Any) -> str:
    """UTC, ISO 8601 with ``Z``. Stored times are UTC; SQLite hands them back naive."""
    if isinstance(value, datetime):
        offset = value.utcoffset()
        if offset is None:
            return value.isoformat() + "Z"
        if offset:
            value = value.astimezone(UTC)
        return value.isoformat()[:-6] + "Z"
    return str(value)


def parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime values are ISO 8601 strings")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_datetime_literal(node: ValueNode, _variables: Any = None) -> datetime:
    if isinstance(node, StringValueNode):
        return parse_datetime(node.value)
    raise ValueError("DateTime literals are ISO 8601 strings")


def scalar_map() -> dict[object, ScalarDefinition]:
    return {
        date: strawberry.scalar(
            name="Date",
            description="A calendar date: YYYY-MM-DD (dd/mm/yyyy is accepted on input).",
            serialize=_serialize_date,
            parse_value=_parse_date,
            parse_literal=_parse_date_literal,
        ),
        datetime: strawberry.scalar(
            name="DateTime",
            description="A point in time, ISO 8601; the server answers in UTC.",
            serialize=serialize_datetime,
            parse_value=parse_datetime,
            parse_literal=_parse_datetime_literal,
        ),
    }
