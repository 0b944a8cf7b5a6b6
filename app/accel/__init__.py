"""The accelerator wing: speed-ups that replace a plain path of the design.

Every accelerator here has a plain twin outside this package (the design: readable, correct,
tested) and a name in ``ACCELERATORS``. One environment variable decides, when the process
starts, which are used, as ``DISABLE_SQLALCHEMY_CEXT_RUNTIME`` does for SQLAlchemy:

    SYNCGRAPH_ACCEL=all            every accelerator (the default)
    SYNCGRAPH_ACCEL=none           the plain path everywhere
    SYNCGRAPH_ACCEL=fastpath,rowcodec   only these
    SYNCGRAPH_ACCEL=-onetrip       all but these

A reader who skips this package still understands the whole system; ``README.md`` beside
this file says what each part replaces, what it gains and how it is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

ACCELERATORS: dict[str, str] = {
    "onetrip": "SQLite DBAPI that runs a statement in one thread round trip (aiosqlite's four)",
    "rowcodec": "generated row readers and writers (SQLAlchemy's result and bind processing)",
    "normalizer": "generated per-entity item normalizer (the generic field loop)",
    "bulkinput": "sync input checked from the raw JSON (graphql-core's input coercion)",
    "fastpath": "executor and serialisation for flat record lists (graphql-core's completion)",
    "fastlane": "POSTs of validated documents past Strawberry's HTTP pipeline (its view)",
    "onewrite": "an HTTP answer's head and body in one socket write (uvicorn's two)",
}


def parse(value: str | None) -> frozenset[str]:
    """The accelerators a ``SYNCGRAPH_ACCEL`` value turns on; an unknown name is an error
    (a typo would otherwise silently measure the wrong thing)."""
    text = (value or "all").strip().lower()
    if text in ("", "all", "on", "1", "true"):
        return frozenset(ACCELERATORS)
    if text in ("none", "off", "0", "false"):
        return frozenset()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted({n.lstrip("-") for n in names} - set(ACCELERATORS))
    if unknown:
        known = ", ".join(ACCELERATORS)
        raise ValueError(f"SYNCGRAPH_ACCEL: unknown accelerator {unknown}; known: {known}")
    if all(n.startswith("-") for n in names):
        return frozenset(ACCELERATORS) - {n[1:] for n in names}
    if any(n.startswith("-") for n in names):
        raise ValueError(
            "SYNCGRAPH_ACCEL: list the accelerators to use, or those to drop, not both"
        )
    return frozenset(names)


_ENABLED: frozenset[str] = parse(os.environ.get("SYNCGRAPH_ACCEL"))


def enabled(name: str) -> bool:
    """Whether the accelerator ``name`` is used in this process."""
    if name not in ACCELERATORS:
        raise KeyError(name)
    return name in _ENABLED


def active() -> list[str]:
    """The accelerators in use, for logs and ``/metrics``."""
    return sorted(_ENABLED)


@contextmanager
def only(*names: str) -> Iterator[None]:
    """Use just ``names`` inside the block (differential tests: the same input through both
    paths). Objects built before the block keep the path they were built with."""
    global _ENABLED
    saved = _ENABLED
    _ENABLED = parse(",".join(names) if names else "none")
    try:
        yield
    finally:
        _ENABLED = saved
