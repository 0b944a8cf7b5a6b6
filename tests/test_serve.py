"""``syncgraph serve``'s uvicorn options: no access log outside dev mode unless asked for
(a log line per request costs about a tenth of an idle poll), and uvicorn's fast parts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.cli import uvicorn_protocol
from app.main import create_app
from app.settings import Settings
from tests.api.test_multiprocess import environment, servers

ACCESS_LINE = '"GET /healthz HTTP/1.1" 200'


@pytest.mark.parametrize(
    ("setting", "logged"), [(None, False), ("true", True)], ids=["default", "asked-for"]
)
def test_serve_no_dev_logs_requests_only_when_asked(
    database_urls: dict[str, str], tmp_path: Path, setting: str | None, logged: bool
) -> None:
    env = environment(database_urls["postgres"])
    if setting is not None:
        env["SYNCGRAPH_ACCESS_LOG"] = setting
    with servers(env, tmp_path, 1) as [(host, _pid)]:
        assert httpx.get(f"http://{host}/healthz", timeout=10).status_code == 200
    log = (tmp_path / "serve-0.log").read_text()
    assert "Application startup complete" in log  # the server's own INFO lines stay
    assert (ACCESS_LINE in log) is logged


def test_uvicorn_picks_uvloop_and_httptools_as_serve_runs_it(
    database_urls: dict[str, str],
) -> None:
    """``serve`` leaves uvicorn's ``loop`` at "auto" and its ``http`` at "auto" or the
    ``onewrite`` accelerator's protocol: with uvicorn[standard] installed, that is uvloop and
    httptools (the C parser and loop)."""
    app = create_app(Settings(database_url=database_urls["sqlite"]))
    config = uvicorn.Config(app, **uvicorn_protocol())
    config.load()
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)
    loop_factory = config.get_loop_factory()
    assert loop_factory is not None
    loop = loop_factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
