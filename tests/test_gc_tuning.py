"""GC tuning belongs to the serving process: ``syncgraph serve`` raises the young-generation
threshold; building and running an app (as every test does) leaves the collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.settings import Settings


@pytest.fixture
def collector() -> Iterator[tuple[int, int, int]]:
    """The thresholds before the test, restored (and nothing left frozen) after it."""
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)
    gc.unfreeze()


async def test_an_app_leaves_the_collector_alone(
    settings: Settings, collector: tuple[int, int, int]
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == collector
    assert gc.get_freeze_count() == 0


def test_serve_tunes_the_collector(
    settings: Settings, collector: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[Any] = []
    monkeypatch.setenv("SYNCGRAPH_DATABASE_URL", settings.database_url)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: served.append(app))
    result = CliRunner().invoke(cli, ["serve", "--no-dev"])
    assert result.exit_code == 0, result.output
    assert len(served) == 1
    assert gc.get_threshold() == (10_000, *collector[1:])
    assert gc.get_freeze_count() > 0
