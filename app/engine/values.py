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


_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,36}").fullmatch
_UUID_ANY_CASE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
).fullmatch
ID_RULE = "1 to 36 characters from A-Z, a-z, 0-9, _ and -"


def parse_id(value: object) -> str | None:
    """A record id as stored, or None: any string of 1 to 36 characters from
    ``[A-Za-z0-9_-]`` (WatermelonDB's 16-character ids, RxDB's string keys), kept exactly as
    given, except that a UUID is lower-cased (its canonical form)."""
    if type(value) is not str or _CLIENT_ID(value) is None:
        return None
    if len(value) == 36 and _UUID_ANY_CASE(value) is not None:
        return value.lower()
    return value


def stored_id(value: object) -> str | None:
    """``value`` itself when it is an id already in its stored form (the common case: no
    lower-casing needed), else None."""
    return value if type(value) is str and parse_id(value) == value else None


def parse_uuid(value: object) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID string, or None (tenants and
    devices: ids the server makes)."""
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
