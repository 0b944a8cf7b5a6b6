"""The in-process broker runs after a writer's commit: one failing listener must neither fail
the writer nor keep the notification from the others."""

from __future__ import annotations

import logging

import pytest

from app.engine.live.notify import Broker


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
