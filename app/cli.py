"""The ``syncgraph`` command. Machine-readable results go to stdout as JSON; messages to
stderr."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Console

from app.settings import Settings

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


def _run(coro: Any) -> Any:
    from app.errors import SyncError

    try:
        return asyncio.run(coro)
    except SyncError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None


async def _with_engine(settings: Settings, fn: Any) -> Any:
    """Run ``fn(conn)`` in one transaction on a migrated database."""
    from app.db import make_engine, write_transaction
    from app.migrate import upgrade

    await asyncio.to_thread(upgrade, settings.database_url)
    engine = make_engine(settings)
    try:
        async with write_transaction(engine) as conn:
            return await fn(conn)
    finally:
        await engine.dispose()


@cli.command()
def migrate() -> None:
    """Apply the database migrations (serve does this too)."""
    from app.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    err.print("migrations applied")


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
) -> None:
    """Migrate, then serve GraphQL on /graphql (GraphiQL in a browser). uvicorn picks
    uvloop and httptools (installed with uvicorn[standard])."""
    from app.db import serves_several_processes
    from app.migrate import upgrade

    settings = Settings() if dev is None else Settings(dev=dev)
    upgrade(settings.database_url)
    if settings.is_dev:
        _dev_bootstrap(settings, host, port)
    if workers > 1 and not serves_several_processes(settings.database_url):
        err.print("[red]error:[/red] several workers need PostgreSQL (set DATABASE_URL)")
        raise typer.Exit(2)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "access_log": settings.is_dev if access_log is None else access_log,
    }
    _run_uvicorn(settings, workers, options)


def _run_uvicorn(settings: Settings, workers: int, options: dict[str, Any]) -> None:
    import uvicorn

    if workers > 1:
        # Workers build their settings from the environment: pass the chosen mode on.
        os.environ["SYNCGRAPH_DEV"] = "true" if settings.is_dev else "false"
        uvicorn.run("app.asgi:app", workers=workers, **options)
        return
    from app.main import create_app

    app = create_app(settings)
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


def _dev_bootstrap(settings: Settings, host: str, port: int) -> None:
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
        f"  GraphiQL, signed in with it: {url}?headers={quote(headers)}\n"
        "  A key that sees one guardian's records (a view; <alias>: a synced user's alias):\n"
        f"  syncgraph key create --tenant {issued.tenant_id} --scopes sync:read,sync:write "
        "--view guardian --param user=<alias>",
        soft_wrap=True,
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
    from app.domains import load_registry
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
        return check_binding(load_registry(), view, values)
    except SyncError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None


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
def export_schema(output: Path = typer.Option(Path("schema.graphql"), "-o", "--output")) -> None:
    """Write the GraphQL SDL (commit it; a test checks it matches the code)."""
    from app.graphql.export import schema_sdl

    output.write_text(schema_sdl())
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
    from app.migrate import upgrade
    from app.state import make_state

    payload = _read_payload(path)
    settings = Settings()
    upgrade(settings.database_url)

    async def run() -> Any:
        state = make_state(settings)
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
    from app.domains import load_registry
    from app.engine.purge import purge_tombstones

    settings = Settings()
    retention = settings.tombstone_retention_days if days is None else days

    async def run(conn: Any) -> int:
        return await purge_tombstones(conn, load_registry(), retention_days=retention)

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
