"""The in-process broker runs after a writer's commit: one failing listener must neither fail
the writer nor keep the notification from the others."""

from __future__ import annotations

import logging

import pytest

from app.engine.live.notify import FRESH_NS, Broker, ForeignWrites


def test_a_failing_listener_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Broker()
    heard: list[tuple[str, str, int]] = []

    def failing(_tenant: str, _kind: str, _seq: int) -> None:
        raise RuntimeError("boom")

    broker.subscribe("t1", failing)
    broker.subscribe("t1", lambda *event: heard.append(event))
    broker.subscribe(None, lambda *event: heard.append(event))
    broker.subscribe("t2", lambda *event: heard.append(("wrong tenant", "", 0)))

    with caplog.at_level(logging.ERROR, logger="syncgraph.notify"):
        broker.publish("t1", 7, kind="actions")

    assert heard == [("t1", "actions", 7), ("t1", "actions", 7)]
    assert "a commit listener failed" in caplog.text


def test_other_processes_writes_are_looked_for_at_most_once_a_millisecond() -> None:
    """The files' stat (``others_wrote``) runs once per millisecond however many requests
    ask; a write it reports is seen by the first request a millisecond after the last look,
    and stays seen."""
    looks: list[int] = []
    wrote = [False]
    now = [0]

    def others_wrote() -> bool:
        looks.append(now[0])
        found, wrote[0] = wrote[0], False
        return found

    watch = ForeignWrites(others_wrote, clock=lambda: now[0])
    assert watch.current() == 0
    wrote[0] = True  # another process commits
    now[0] += FRESH_NS - 1
    assert watch.current() == 0  # within the millisecond: not looked
    now[0] += 1
    assert watch.current() == 1
    assert watch.current() == 1
    now[0] += 10 * FRESH_NS
    assert watch.current() == 1  # nothing new
    assert looks == [0, FRESH_NS, 11 * FRESH_NS]
