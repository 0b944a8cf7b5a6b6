"""GraphiQL is served with local assets only (no internet access needed).

The asset files are downloaded by ``scripts/fetch-graphiql``, which CI runs
before the tests.
"""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient
from strawberry.http.ides import get_graphql_ide_html

import app.graphiql as graphiql
from app.graphiql import STATIC_DIR, graphiql_response, offline_graphiql_html

PREFIX = "/static/graphiql/"
FETCH_HINT = "run scripts/fetch-graphiql first"


class _Refs(HTMLParser):
    """``(url, integrity)`` of every ``<script src>`` and ``<link href>`` in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {"script": "src", "link": "href"}.get(tag)
        values = dict(attrs)
        url = values.get(attr) if attr else None
        if url is not None:
            self.refs.append((url, values.get("integrity")))


def refs(page: str) -> list[tuple[str, str | None]]:
    parser = _Refs()
    parser.feed(page)
    parser.close()
    return parser.refs


def local_assets(page: str) -> list[tuple[str, str]]:
    """``(url, integrity)`` of the page's files under /static/graphiql/."""
    return [(url, integrity or "") for url, integrity in refs(page) if url.startswith(PREFIX)]


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def local_file(url: str) -> Path:
    return STATIC_DIR / url.removeprefix("/static/")


def test_rewritten_page_has_no_remote_assets() -> None:
    page = offline_graphiql_html()
    remote = [url for url, _ in refs(page) if url.lower().startswith(("http:", "https:", "//"))]
    assert remote == []
    # everything else is inline (data: favicon), nothing outside /static/graphiql/
    assert all(url.startswith((PREFIX, "data:")) for url, _ in refs(page))


def test_every_template_asset_is_rewritten_with_its_integrity() -> None:
    original = [
        (url, integrity)
        for url, integrity in refs(get_graphql_ide_html("graphiql"))
        if url.startswith("https://")
    ]
    rewritten = local_assets(offline_graphiql_html())
    assert len(original) == 7  # react, react-dom, js-cookie, graphiql js+css, explorer js+css
    assert [i for _, i in rewritten] == [i for _, i in original]
    assert all(i.startswith("sha384-") for _, i in rewritten)
    assert [u.removeprefix("https://unpkg.com/") for u, _ in original] == [
        u.removeprefix(PREFIX) for u, _ in rewritten
    ]


def test_custom_static_prefix() -> None:
    page = offline_graphiql_html("/assets/gql/")
    assert '"/assets/gql/react@18.2.0/umd/react.production.min.js"' in page
    assert PREFIX not in page


def test_local_files_exist_and_match_integrity() -> None:
    assets = local_assets(offline_graphiql_html())
    assert assets
    missing = [url for url, _ in assets if not local_file(url).is_file()]
    assert missing == [], f"missing GraphiQL assets ({FETCH_HINT}): {missing}"
    for url, integrity in assets:
        assert sri(local_file(url).read_bytes()) == integrity, url
    assert graphiql.missing_assets() == []


def _app() -> Starlette:
    def graphql_page(request: Request) -> Response:
        return graphiql_response(request)

    return Starlette(
        routes=[
            Route("/graphql", graphql_page),
            Mount("/static", StaticFiles(directory=STATIC_DIR)),
        ]
    )


def test_app_serves_page_and_assets() -> None:
    with TestClient(_app()) as client:
        page = client.get("/graphql")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assets = local_assets(page.text)
        assert len(assets) == 7
        for url, integrity in assets:
            resp = client.get(url)
            assert resp.status_code == 200, f"{url} ({FETCH_HINT})"
            assert sri(resp.content) == integrity, url
            expected_type = "css" if url.endswith(".css") else "javascript"
            assert expected_type in resp.headers["content-type"], url


def test_missing_assets_gives_503_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graphiql, "GRAPHIQL_DIR", tmp_path)
    assert len(graphiql.missing_assets()) == 7
    with TestClient(_app()) as client:
        resp = client.get("/graphql")
    assert resp.status_code == 503
    assert resp.headers["content-type"].startswith("text/html")
    assert "scripts/fetch-graphiql" in resp.text
    assert "react@18.2.0/umd/react.production.min.js" in resp.text


def test_missing_assets_page_says_the_fix_for_an_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wheel built without npm has no assets and no scripts/: the page says to rebuild."""
    monkeypatch.setattr(graphiql, "GRAPHIQL_DIR", tmp_path)
    with TestClient(_app()) as client:
        resp = client.get("/graphql")
    assert resp.status_code == 503
    assert "python -m build --wheel" in resp.text
    assert "npm" in resp.text


def test_unknown_remote_asset_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    page = get_graphql_ide_html("graphiql").replace(
        "</head>", '<script src="https://cdn.example.com/new.js"></script></head>'
    )
    monkeypatch.setattr(graphiql, "get_graphql_ide_html", lambda ide="graphiql": page)
    with pytest.raises(RuntimeError, match=r"https://cdn\.example\.com/new\.js"):
        offline_graphiql_html()
