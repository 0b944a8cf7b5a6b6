"""The ASGI app: Starlette routes around the GraphQL view; the lifespan owns the engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from app.accel.fastlane import FastLaneMiddleware
from app.edge import EdgeMiddleware
from app.graphiql import STATIC_DIR
from app.graphql.schema import build_schema
from app.graphql.view import SyncGraphQL
from app.requestid import RequestIdMiddleware, configure_logging
from app.settings import Settings
from app.state import AppState, make_state

log = logging.getLogger("syncgraph")


def create_app(settings: Settings | None = None, *, state: AppState | None = None) -> Starlette:
    """The whole server. Tests pass their own ``state``; ``serve`` passes settings."""
    settings = settings or (state.settings if state else Settings())
    configure_logging(settings.log_level)
    state = state or make_state(settings)
    graphql = _graphql(state, settings)
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(EdgeMiddleware, max_bytes=settings.max_body_bytes),
    ]
    if graphql.fast_lane is not None:  # the accelerator wing: app/accel/fastlane.py
        middleware.append(Middleware(FastLaneMiddleware, lane=graphql.fast_lane))
    app = Starlette(
        routes=_routes(graphql, settings),
        middleware=middleware,
        lifespan=_lifespan(state),
    )
    app.state.sync = state
    return app


def _graphql(state: AppState, settings: Settings) -> SyncGraphQL:
    return SyncGraphQL(
        state,
        schema=build_schema(state.registry, settings),
        graphql_ide="graphiql",
        keep_alive=True,
        keep_alive_interval=15,
        connection_init_wait_timeout=timedelta(seconds=10),
        allowed_origins=settings.origins(),
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
    )


def _routes(graphql: SyncGraphQL, settings: Settings) -> list[BaseRoute]:
    return [
        # EdgeMiddleware answers an oversize body (declared or streamed) with a JSON error
        # first; the route's own limit stays as a second guard.
        Route("/graphql", graphql, methods=["GET", "POST"], max_body_size=settings.max_body_bytes),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]


def _lifespan(state: AppState) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.close()

    return lifespan


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state: AppState = request.app.state.sync
    try:
        async with state.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure means not ready
        log.warning("readiness check failed: %s", exc)
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    state: AppState = request.app.state.sync
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
