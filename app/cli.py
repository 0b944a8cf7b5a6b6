"""The ``syncgraph`` command. Machine-readable results go to stdout as JSON; messages to
stderr."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.markup import escape

from app import accel
from app.errors import StartupError
from app.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from app.engine.registry import Registry

cli = typer.Typer(
    no_args_is_help=True, add_completion=False, help="syncgraph: a GraphQL sync server"
)
tenant_cli = typer.Typer(no_args_is_help=True, help="Tenants")
key_cli = typer.Typer(no_args_is_help=True, help="API keys")
cli.add_typer(tenant_cli, name="tenant")
device_cli = typer.Typer(no_args_is_help=True, help="Devices of the action log")
cli.add_typer(key_cli, name="key")
cli.add_typer(device_cli, name="device")
err = Console(stderr=True)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(2)


def _run(coro: Any) -> Any:
    from app.errors import SyncError

    try:
        return asyncio.run(coro)
    except SyncError as exc:
        raise _fail(exc.message) from None
    except StartupError as exc:
        raise _fail(str(exc)) from None


DEBUG = typer.Option(False, "--debug", help="Show the traceback of an error at start-up")


@contextmanager
def _starting(debug: bool) -> Iterator[None]:
    """A ``StartupError`` (an entity module, a migration) is one message and exit 2; with
    ``--debug`` its traceback comes first."""
    try:
        yield
    except StartupError as exc:
        if debug:
            traceback.print_exc()
        raise _fail(str(exc)) from None


def _registry(settings: Settings) -> Registry:
    from app.domains import configured_registry

    return configured_registry(settings)


def _prepare(settings: Settings) -> Registry:
    """The configured registry, and the database migrated to it: what every command that
    touches the database does first. Whatever stops it (``StartupError``) stops it before
    anything is written."""
    from app.domains import own_tables
    from app.migrate import upgrade

    registry = _registry(settings)
    folders = settings.migration_folders()
    upgrade(settings.database_url, folders=folders, tables=own_tables(registry))
    return registry


async def _with_engine(settings: Settings, fn: Any) -> Any:
    """Run ``fn(conn)`` in one transaction on a migrated database."""
    from app.db import make_engine, write_transaction

    await asyncio.to_thread(_prepare, settings)
    engine = make_engine(settings)
    try:
        async with write_transaction(engine) as conn:
            return await fn(conn)
    finally:
        await engine.dispose()


@cli.command()
def migrate(debug: bool = DEBUG) -> None:
    """Apply syncgraph's migrations and those of SYNCGRAPH_MIGRATION_PATHS (serve does this
    too); refused, with nothing written, while one of your tables has no migration."""
    settings = Settings()
    with _starting(debug):
        _prepare(settings)
    err.print("migrations applied")


@cli.command()
def makemigrations(
    message: str = typer.Option(..., "-m", "--message", help="What the revision does"),
    path: Path = typer.Option(..., help="Your migrations folder (made if missing)"),
    label: str | None = typer.Option(
        None, help="The branch name of a new folder (default: the folder's project name)"
    ),
    debug: bool = DEBUG,
) -> None:
    """Write a revision of your entities' tables (never syncgraph's) into --path: the
    database is migrated first, then compared with your models."""
    from app.domains import own_tables
    from app.migrate import makemigrations as write_revision

    settings = Settings()
    with _starting(debug):
        tables = own_tables(_registry(settings))
        if not tables:
            raise StartupError(
                "none of your entity modules is loaded (only the shipped domains, whose "
                "migrations come with syncgraph): set SYNCGRAPH_ENTITY_MODULES=your.module"
            )
        written = write_revision(
            settings.database_url,
            folder=path,
            message=message,
            tables=tables,
            folders=settings.migration_folders(),
            label=label,
        )
    if written is None:
        err.print("no changes in your entities' tables: no revision written")
        return
    err.print(f"wrote {written}", soft_wrap=True)
    if path.resolve() not in {f.resolve() for f in settings.migration_folders()}:
        err.print(
            f"add {path} to SYNCGRAPH_MIGRATION_PATHS: migrate and serve apply its revisions",
            soft_wrap=True,
        )


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="Port"),
    workers: int = typer.Option(1, help="Worker processes (PostgreSQL only)"),
    dev: bool | None = typer.Option(
        None, "--dev/--no-dev", help="Dev mode (default: on with SQLite)"
    ),
    access_log: bool | None = typer.Option(
        None,
        "--access-log/--no-access-log",
        envvar="SYNCGRAPH_ACCESS_LOG",
        help="A log line per request (default: in dev mode only; it costs about a tenth "
        "of a poll's time)",
    ),
    debug: bool = DEBUG,
) -> None:
    """Migrate, then serve GraphQL on /graphql (GraphiQL in a browser). Refused, with
    nothing written, while one of your tables has no migration. uvicorn picks uvloop and
    httptools (installed with uvicorn[standard])."""
    from app.db import serves_several_processes

    settings = Settings() if dev is None else Settings(dev=dev)
    if workers > 1 and not serves_several_processes(settings.database_url):
        raise _fail("several workers need PostgreSQL (set DATABASE_URL)")
    with _starting(debug):
        app = _app(settings, workers)
        registry = _prepare(settings)
    if settings.is_dev:
        _dev_bootstrap(settings, host, port, registry)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "access_log": settings.is_dev if access_log is None else access_log,
        **uvicorn_protocol(),
    }
    _run_uvicorn(settings, app, workers, options)


def uvicorn_protocol() -> dict[str, Any]:
    """uvicorn's ``http`` option: its own choice (httptools), or the ``onewrite``
    accelerator's protocol built on it (``app/accel/onewrite.py``)."""
    if not accel.enabled("onewrite"):
        return {}
    try:
        from app.accel.onewrite import PROTOCOL
    except ImportError:  # no httptools (uvicorn without [standard]): uvicorn picks h11
        return {}
    return {"http": PROTOCOL}


def _app(settings: Settings, workers: int) -> Starlette | None:
    """The app, built before anything is written: an entity named like one of syncgraph's
    own types stops the start here. Several workers build one each (``app.asgi``): the
    schema is built here once, for its checks."""
    if workers > 1:
        from app.graphql.schema import build_schema

        build_schema(_registry(settings), settings)
        return None
    from app.main import create_app

    return create_app(settings)


def _run_uvicorn(
    settings: Settings, app: Starlette | None, workers: int, options: dict[str, Any]
) -> None:
    import uvicorn

    if app is None:
        # Workers build their settings from the environment: pass the chosen mode on.
        os.environ["SYNCGRAPH_DEV"] = "true" if settings.is_dev else "false"
        uvicorn.run("app.asgi:app", workers=workers, **options)
        return
    tune_gc()
    uvicorn.run(app, **options)


def tune_gc() -> None:
    """The collector tuned for serving (a process-wide choice, so the server's command
    makes it, not the app factory that tests call too); each worker of ``--workers`` makes it
    in ``app.asgi``."""
    import gc

    gc.freeze()  # start-up objects leave the collector's generations: shorter GC pauses
    # A 1,000-item request allocates some 100,000 containers, nearly all freed by
    # reference counting: at 700 a young collection ran ~16 times per request (2.3 ms
    # of a 1,000-row sync); at 10,000 about once (0.8 ms).
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def _dev_bootstrap(settings: Settings, host: str, port: int, registry: Registry) -> None:
    from app.engine.tenants import SCOPES, create_key, create_tenant, list_tenants

    async def bootstrap(conn: Any) -> Any:
        if await list_tenants(conn):
            return None
        tenant_id = await create_tenant(conn, "dev")
        return await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)

    issued = _run(_with_engine(settings, bootstrap))
    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/graphql"  # noqa: S104
    if issued is None:
        err.print(f"[bold]syncgraph[/bold] dev mode — GraphiQL at {url}")
        return
    headers = json.dumps({"Authorization": f"Bearer {issued.key}"})
    err.print(
        f"[bold]syncgraph[/bold] dev mode: created tenant [cyan]{issued.tenant_id}[/cyan]\n"
        f"  API key (shown once): [green]{issued.key}[/green]\n"
        f"  GraphiQL, signed in with it: {url}?headers={quote(headers)}"
        + _view_key_hint(registry, issued.tenant_id),
        soft_wrap=True,
    )


def _view_key_hint(registry: Registry, tenant_id: str) -> str:
    """How to make a key bound to the first declared view, if there is one."""
    view = next(iter(registry.views.values()), None)
    if view is None:
        return ""
    param, entity = next(iter(view.param_entities.items()))
    return (
        f"\n  A key that sees one {view.name}'s records (a view; <alias>: a synced "
        f"{entity.lower()}'s alias):\n"
        f"  syncgraph key create --tenant {tenant_id} --scopes sync:read,sync:write "
        f"--view {view.name} --param {param}=<alias>"
    )


@tenant_cli.command("create")
def tenant_create(
    name: str, tenant_id: str | None = typer.Option(None, "--id", help="A UUID to use")
) -> None:
    """Create a tenant; prints {"id", "name"}."""
    from app.engine.tenants import create_tenant

    async def create(conn: Any) -> str:
        return await create_tenant(conn, name, tenant_id=tenant_id)

    new_id = _run(_with_engine(Settings(), create))
    _print_json({"id": new_id, "name": name})


@tenant_cli.command("list")
def tenant_list() -> None:
    """List tenants as JSON lines."""
    from app.engine.tenants import list_tenants

    for row in _run(_with_engine(Settings(), list_tenants)):
        _print_json({"id": row["id"], "name": row["name"], "seq": row["seq"]})


@key_cli.command("create")
def key_create(
    scopes: str = typer.Option(..., help="Comma list: sync:read,sync:write,sync:manage"),
    tenant: str | None = typer.Option(None, help="The tenant id the key belongs to"),
    system: bool = typer.Option(False, "--system", help="A key for every tenant (X-Tenant-Id)"),
    view: str | None = typer.Option(None, help="Bind the key to this view (README: Views)"),
    param: list[str] = typer.Option([], help="A view parameter, K=V (id or alias); repeatable"),
) -> None:
    """Create an API key; prints {"id", "key", "tenantId", "scopes", "view"}. The key is
    shown once."""
    from app.engine.tenants import create_key, parse_scopes

    binding = _binding(view, param)

    async def create(conn: Any) -> Any:
        return await create_key(
            conn, tenant_id=tenant, scopes=parse_scopes(scopes), system=system, view=binding
        )

    issued = _run(_with_engine(Settings(), create))
    _print_json(
        {
            "id": issued.id,
            "key": issued.key,
            "tenantId": issued.tenant_id,
            "scopes": list(issued.scopes),
            "system": issued.system,
            "view": issued.view.as_json() if issued.view else None,
        }
    )


@key_cli.command("set-view")
def key_set_view(
    key_id: str = typer.Option(..., "--key-id", help="The key's id (from key create)"),
    view: str | None = typer.Option(None, help="The view to bind the key to"),
    param: list[str] = typer.Option([], help="A view parameter, K=V (id or alias); repeatable"),
    no_view: bool = typer.Option(False, "--no-view", help="Unbind: the key sees the tenant"),
) -> None:
    """Rebind a key to a view (or unbind it); its clients' next pull moves records in and
    out. Prints {"id", "view"}."""
    from app.engine.tenants import set_key_view

    if no_view == (view is not None):
        err.print("[red]error:[/red] give either --view NAME (with --param K=V) or --no-view")
        raise typer.Exit(2)
    binding = None if no_view else _binding(view, param)

    async def run(conn: Any) -> Any:
        return await set_key_view(conn, key_id, binding)

    _run(_with_engine(Settings(), run))
    _print_json({"id": key_id, "view": binding.as_json() if binding else None})


def _binding(view: str | None, params: list[str]) -> Any:
    """``--view`` and ``--param K=V`` as a checked binding (exit 2 with the reason)."""
    from app.engine.views.spec import check_binding
    from app.errors import SyncError

    if view is None:
        if params:
            err.print("[red]error:[/red] --param needs --view")
            raise typer.Exit(2)
        return None
    values: dict[str, str] = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            err.print(f"[red]error:[/red] --param {item!r}: write it as NAME=VALUE")
            raise typer.Exit(2)
        values[name.strip()] = value
    try:
        return check_binding(_registry(Settings()), view, values)
    except SyncError as exc:
        raise _fail(exc.message) from None
    except StartupError as exc:
        raise _fail(str(exc)) from None


@device_cli.command("list")
def device_list(tenant: str | None = typer.Option(None, help="Only this tenant's devices")) -> None:
    """List devices as JSON lines (id, tenantId, name, lastSequenceNumber, removedAt)."""
    from app.engine.devices.devices import list_devices

    async def run(conn: Any) -> Any:
        return await list_devices(conn, tenant)

    for row in _run(_with_engine(Settings(), run)):
        _print_json(
            {
                "id": row["id"],
                "tenantId": row["tenant_id"],
                "name": row["name"],
                "lastSequenceNumber": row["last_sequence"],
                "removedAt": row["removed_at"],
            }
        )


@device_cli.command("remove")
def device_remove(
    device_id: str, tenant: str = typer.Option(..., help="The tenant the device belongs to")
) -> None:
    """Revoke a device's token, as removeDevice does; prints {"removed": bool}."""
    from app.engine.devices.devices import remove_device

    async def run(conn: Any) -> bool:
        return await remove_device(conn, tenant, device_id)

    removed = _run(_with_engine(Settings(), run))
    _print_json({"removed": removed})
    if not removed:
        err.print(f"no device {device_id} in tenant {tenant}")
        raise typer.Exit(1)


@cli.command("export-schema")
def export_schema(
    output: Path = typer.Option(Path("schema.graphql"), "-o", "--output"), debug: bool = DEBUG
) -> None:
    """Write the GraphQL SDL of the configured entities (syncgraph's committed file describes
    the shipped domains; a test checks it matches the code)."""
    from app.graphql.export import schema_sdl

    with _starting(debug):
        sdl = schema_sdl(_registry(Settings()))
    output.write_text(sdl)
    err.print(f"wrote {output}")


@cli.command("import")
def import_file(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A sync payload (JSON)"),
    tenant: str | None = typer.Option(None, help="Tenant id (default: the only tenant)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Report what would change; write nothing"
    ),
    clean_sync: list[str] = typer.Option(
        [], "--clean-sync", help="Entity to mirror exactly (repeat)"
    ),
    force: bool = typer.Option(False, "--force", help="Allow cleanSync to delete over half"),
) -> None:
    """Run a sync payload from a file in batches, with a progress bar; prints the report."""
    from rich.progress import Progress

    from app.engine.write.importer import ImportFailed, plan_batches, run_import
    from app.state import make_state

    payload = _read_payload(path)
    settings = Settings()
    with _starting(False):
        registry = _prepare(settings)

    async def run() -> Any:
        state = make_state(settings, registry)
        try:
            tenant_id = await _pick_tenant(state, tenant)
            batches = plan_batches(state.service, payload)
            with Progress(console=err) as bar:
                task = bar.add_task("importing", total=sum(len(b.items) for b in batches))
                return await run_import(
                    state.service,
                    tenant_id,
                    payload,
                    clean=set(clean_sync),
                    dry_run=dry_run,
                    force=force,
                    progress=lambda b, _r: bar.advance(task, len(b.items)),
                )
        finally:
            await state.close()

    try:
        report = _run(run())
    except ImportFailed as exc:
        err.print(f"[red]import stopped:[/red] {exc.message}")
        raise typer.Exit(1) from None
    _print_json(_import_summary(report))
    if any(r.errors for r in report.entities.values()):
        err.print("[yellow]some items failed; see errors in the report[/yellow]")
        raise typer.Exit(1)


def _read_payload(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] cannot read {path}: {exc}")
        raise typer.Exit(2) from None


async def _pick_tenant(state: Any, tenant: str | None) -> str:
    from app.engine.tenants import get_tenant, list_tenants
    from app.errors import BadRequest

    async with state.engine.connect() as conn:
        if tenant is not None:
            if await get_tenant(conn, tenant) is None:
                raise BadRequest(f"no tenant {tenant}")
            return tenant
        tenants = await list_tenants(conn)
    if len(tenants) != 1:
        raise BadRequest("name the tenant with --tenant (there is not exactly one)")
    return str(tenants[0]["id"])


def _import_summary(report: Any) -> dict[str, Any]:
    entities = {}
    for plural, r in report.entities.items():
        entities[plural] = {
            "inserted": r.inserted,
            "updated": r.updated,
            "unchanged": r.unchanged,
            "deleted": r.deleted,
            "failed": r.failed,
            "cleanSync": r.clean_sync,
            "errors": [
                {"index": e.index, "code": e.code, "field": e.field, "message": e.message}
                for e in r.errors
            ],
        }
    return {"dryRun": report.dry_run, "batches": len(report.applied), "entities": entities}


@cli.command()
def purge(
    days: int | None = typer.Option(None, help="Retention in days (default: setting)"),
) -> None:
    """Delete tombstones older than the retention (default 30 days)."""
    from app.engine.purge import purge_tombstones

    settings = Settings()
    retention = settings.tombstone_retention_days if days is None else days

    async def run(conn: Any) -> int:
        return await purge_tombstones(conn, _registry(settings), retention_days=retention)

    async def keys() -> int:
        from datetime import timedelta

        from app.db import make_engine
        from app.engine.idempotency import purge_keys

        engine = make_engine(settings)
        try:
            return await purge_keys(engine, ttl=timedelta(hours=settings.idempotency_ttl_hours))
        finally:
            await engine.dispose()

    count = _run(_with_engine(settings, run))
    expired = _run(keys())
    _print_json({"purged": count, "retentionDays": retention, "idempotencyKeysPurged": expired})


def main() -> None:
    cli()
