"""`catalogan keys create|revoke|ls`: API keys (direct SQL; only hashes are stored)."""

from __future__ import annotations

import click
from sqlalchemy import select

from db.cli_support import one_line_errors
from db.engine import transaction
from db.tables import ApiKey, Tenant
from db.tenants import create_api_key, get_tenant_by_name, revoke_api_key
from scheduler.cli.database import cli_session_factory
from scheduler.cli.output import json_option, print_json, print_rows

COLUMNS = ("id", "tenant", "name", "prefix", "created_at", "revoked_at")
# `api_keys.name` is String(64) (db/tables.py): PostgreSQL refused a longer label with a DataError traceback,
# SQLite kept it. (A test holds the two together.)
MAX_KEY_NAME_LENGTH = 64


def key_name_option(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """`--name` when it fits the column; a usage error naming the option and the rule otherwise."""
    if len(value) > MAX_KEY_NAME_LENGTH:
        raise click.BadParameter(f"{len(value)} characters: at most {MAX_KEY_NAME_LENGTH}", param=param)
    return value


@click.group("keys")
def keys() -> None:
    """Create, revoke and list API keys.

    Example:

    \b
        catalogan keys create --tenant acme --name etl
    """


@keys.command("create")
@click.option("--tenant", "tenant_name", required=True, help="Tenant name.")
@click.option(
    "--name",
    default="",
    callback=key_name_option,
    help=f"A label for the key (e.g. the system that uses it), at most {MAX_KEY_NAME_LENGTH} characters.",
)
@json_option
@one_line_errors
def create(tenant_name: str, name: str, as_json: bool) -> None:
    """Create an API key; the clear key is printed once and cannot be shown again.

    Example:

    \b
        export CATALOGAN_API_KEY=$(catalogan keys create --tenant acme --name etl --json | jq -r .api_key)
    """
    with transaction(cli_session_factory()) as session:
        tenant = get_tenant_by_name(session, tenant_name)
        issued = create_api_key(session, tenant.id, name=name)
    if as_json:
        print_json(
            {
                "id": issued.key_id,
                "tenant": tenant_name,
                "name": name,
                "prefix": issued.prefix,
                "api_key": issued.clear_key,
            }
        )
        return
    click.echo(f"API key {issued.key_id} for {tenant_name} (shown once):")
    click.echo(issued.clear_key)


@keys.command("revoke")
@click.argument("key_id")
@json_option
@one_line_errors
def revoke(key_id: str, as_json: bool) -> None:
    """Revoke a key at once: requests with it get 401 from now on.

    Example:

    \b
        catalogan keys revoke 0f3c9a...e1
    """
    with transaction(cli_session_factory()) as session:
        changed = revoke_api_key(session, key_id)
    if as_json:
        print_json({"id": key_id, "revoked": True, "changed": changed})
    else:
        click.echo(f"key {key_id} {'revoked' if changed else 'was already revoked'}")


@keys.command("ls")
@click.option("--tenant", "tenant_name", default=None, help="Only this tenant's keys.")
@json_option
@one_line_errors
def list_keys(tenant_name: str | None, as_json: bool) -> None:
    """List API keys (never the keys themselves: id, public prefix, dates).

    Example:

    \b
        catalogan keys ls --tenant acme --json
    """
    with cli_session_factory()() as session:
        query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
        if tenant_name:
            query = query.where(Tenant.id == get_tenant_by_name(session, tenant_name).id)
        rows = session.execute(query.order_by(Tenant.name, ApiKey.created_at)).all()
    data = [
        {
            "id": key.id,
            "tenant": tenant,
            "name": key.name,
            "prefix": key.prefix,
            "created_at": key.created_at,
            "revoked_at": key.revoked_at,
        }
        for key, tenant in rows
    ]
    print_rows(data, COLUMNS, as_json=as_json, title="API keys")
