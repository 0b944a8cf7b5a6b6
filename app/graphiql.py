"""GraphiQL served without internet access.

Strawberry's GraphiQL page loads React, GraphiQL and the explorer plugin from
unpkg.com. ``scripts/fetch-graphiql`` downloads the very same files from the npm
registry into ``app/static/graphiql/`` (git-ignored), mirroring unpkg's layout::

    app/static/graphiql/<package>@<version>/<path in package>
    e.g. app/static/graphiql/react@18.2.0/umd/react.production.min.js

and this module rewrites the page to load them from ``/static/graphiql/...``.
The ``integrity`` (SRI) attributes are kept, so the browser still checks that
the local files are byte-for-byte the ones Strawberry pinned. Building a wheel
runs the same fetch (``setup.py``), so an installed package carries the files
when the build machine has npm.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from strawberry.http.ides import get_graphql_ide_html

STATIC_DIR: Path = Path(__file__).resolve().parent / "static"
GRAPHIQL_DIR: Path = STATIC_DIR / "graphiql"
DEFAULT_STATIC_PREFIX = "/static/graphiql"
CDN_PREFIX = "https://unpkg.com/"
FETCH_SCRIPT = "scripts/fetch-graphiql"


@dataclass(frozen=True)
class Asset:
    """One file the template loads from unpkg, e.g. ``react@18.2.0/umd/react.production.min.js``."""

    url: str
    integrity: str
    package: str  # npm spec: "react@18.2.0", "@graphiql/plugin-explorer@1.0.2"
    path_in_package: str  # "umd/react.production.min.js"

    @property
    def relpath(self) -> str:
        """Path of the local copy, relative to ``GRAPHIQL_DIR`` (and to the URL prefix)."""
        return f"{self.package}/{self.path_in_package}"


class _AssetTagParser(HTMLParser):
    """Collects ``(url, integrity)`` of every ``<script src>`` and ``<link href>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {"script": "src", "link": "href"}.get(tag)
        values = dict(attrs)
        url = values.get(attr) if attr else None
        if url is not None:
            self.refs.append((url.strip(), values.get("integrity")))


def asset_refs(page: str) -> list[tuple[str, str | None]]:
    """``(url, integrity)`` of each script/link tag of ``page``, in document order."""
    parser = _AssetTagParser()
    parser.feed(page)
    parser.close()
    return parser.refs


def is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "//"))


def _parse_cdn_url(url: str, integrity: str | None) -> Asset | None:
    """The asset behind a pinned unpkg URL with a sha384 integrity, else None."""
    if not url.startswith(CDN_PREFIX) or not (integrity or "").startswith("sha384-"):
        return None
    parts = url.removeprefix(CDN_PREFIX).split("/")
    n = 2 if parts[0].startswith("@") else 1  # scoped packages take two segments
    package, path = "/".join(parts[:n]), parts[n:]
    if "@" not in package.lstrip("@") or not path or any(p in ("", ".", "..") for p in path):
        return None
    return Asset(url, integrity or "", package, "/".join(path))


def template_assets() -> list[Asset]:
    """The pinned unpkg assets of Strawberry's GraphiQL template."""
    page = get_graphql_ide_html("graphiql")
    found = (_parse_cdn_url(url, integrity) for url, integrity in asset_refs(page))
    return list({a.url: a for a in found if a is not None}.values())


def offline_graphiql_html(static_prefix: str = DEFAULT_STATIC_PREFIX) -> str:
    """Strawberry's GraphiQL page, loading its assets from ``static_prefix``.

    Raises RuntimeError if the template still references a remote asset after
    the rewrite (e.g. a Strawberry upgrade moved to another CDN or dropped SRI).
    """
    page = get_graphql_ide_html("graphiql")
    prefix = static_prefix.rstrip("/")
    for asset in template_assets():
        page = page.replace(f'"{asset.url}"', f'"{prefix}/{asset.relpath}"')
    remaining = [url for url, _ in asset_refs(page) if is_remote(url)]
    if remaining:
        raise RuntimeError(
            "Strawberry's GraphiQL template references remote assets that cannot be "
            f"served offline: {', '.join(remaining)}. Update app/graphiql.py and "
            f"{FETCH_SCRIPT} for this Strawberry version."
        )
    return page


def missing_assets() -> list[str]:
    """Local asset files (relative to ``GRAPHIQL_DIR``) that are not present."""
    return [a.relpath for a in template_assets() if not (GRAPHIQL_DIR / a.relpath).is_file()]


def sri_sha384(data: bytes) -> str:
    """Subresource-integrity value of ``data``: ``sha384-<base64 digest>``."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")


def _missing_page(missing: list[str]) -> str:
    items = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in missing)
    return (
        "<!doctype html><html><head><title>GraphiQL assets missing</title></head><body>"
        "<h1>GraphiQL assets are not installed</h1>"
        f"<p>In a checkout: run <code>{FETCH_SCRIPT}</code> to download them "
        "from the npm registry, then reload this page.</p>"
        "<p>Installed from a wheel (<code>pip install .</code>, pipx, Docker): the wheel was "
        "built where <code>npm</code> was missing or could not fetch them. Build it again on "
        "a machine with <code>npm</code> (<code>python -m build --wheel</code>), reinstall "
        "it, and restart the server.</p>"
        "<p>Missing files in <code>app/static/graphiql/</code> (inside the installed "
        f"package):</p><ul>{items}</ul>"
        "</body></html>"
    )


def graphiql_response(request: Request, *, static_prefix: str = DEFAULT_STATIC_PREFIX) -> Response:
    """The offline GraphiQL page, or a 503 page telling how to install its assets."""
    missing = missing_assets()
    if missing:
        return HTMLResponse(_missing_page(missing), status_code=503)
    return HTMLResponse(offline_graphiql_html(static_prefix))
