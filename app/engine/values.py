"""Values shared by the engine and its transports: wire names, record ids, dates."""

from __future__ import annotations

import functools
import re
import uuid
from datetime import date, datetime

from pydantic.alias_generators import to_camel

_DMY = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


@functools.lru_cache(maxsize=4096)
def camel(name: str) -> str:
    """A column or field name as the API spells it (``first_name`` -> ``firstName``)."""
    return to_camel(name)


def parse_uuid(value: object) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID string, or None."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def parse_date(value: object) -> date | None:
    """ISO 8601 (``2004-08-22``) or, for compatibility, ``dd/mm/yyyy``."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)  # the common case (a dd/mm/yyyy date never is ISO)
    except ValueError:
        pass
    match = _DMY.match(value.strip())
    try:
        if match:
            day, month, year = (int(g) for g in match.groups())
            return date(year, month, day)
        return date.fromisoformat(value.strip())
    except ValueError:
        return None
