"""`catalogan tenants create|set|ls|rotate-webhook-secret`: customer accounts (direct SQL; an operator command)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import click
from sqlalchemy import func, select, update

from db.cli_support import FiniteFloat, one_line_errors
from db.engine import transaction
from db.job_specs import MAX_URL_LENGTH
from db.quotas import QUEUES_BY_PRIORITY
from db.tables import ApiKey, Tenant
from db.tenants import (
    MAX_WEBHOOK_SECRET_GRACE,
    create_api_key,
    create_tenant,
    get_tenant_by_name,
    set_tenant_limits,
    set_webhook_secret,
)
from db.urls import WEBHOOK_URL_PATTERN  # the API's rule for a job's webhook_url
from scheduler.cli.database import cli_session_factory
from scheduler.cli.output import json_option, print_json, print_rows
from scheduler.signatures import new_secret

COLUMNS = (
    "id",
    "name",
    "images_per_day",
    "max_concurrent_jobs",
    "requests_per_minute",
    "highest_queue",
    "webhook_url",
    "keys",
    "created_at",
)


# The quota columns are 32-bit integers on PostgreSQL: a larger value was a DataError traceback.
MAX_QUOTA = 2**31 - 1


def webhook_url_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--webhook-url`: the URL rule the API applies to a job's `webhook_url` (http or https, a DNS name or IPv4
    host, an optional port, no credentials, at most `MAX_URL_LENGTH` characters), as a usage error naming the
    option; nothing is written otherwise. The host is not resolved here: the API never checks a tenant's
    default at submit either, and the dispatcher checks its addresses before every delivery (private ones are
    refused unless CATALOGAN_WEBHOOK_ALLOW_PRIVATE_TARGETS), from the host that sends it."""
    if value is None:
        return None
    from scheduler.errors import UnsafeWebhookTargetError
    from scheduler.webhooks import check_target

    if len(value) > MAX_URL_LENGTH:
        raise click.BadParameter(f"{len(value)} characters: at most {MAX_URL_LENGTH}", param=param)
    try:
        check_target(value, allow_private=True)  # scheme, host, credentials, port; no lookup
    except UnsafeWebhookTargetError as exc:
        raise click.BadParameter(str(exc).removeprefix("webhook_url "), param=param) from None
    if not re.fullmatch(WEBHOOK_URL_PATTERN, value):
        raise click.BadParameter(
            f"{value!r}: must be http(s)://host[:port][/path] with a DNS name or IPv4 address as host",
            param=param,
        )
    return value


@click.group("tenants")
def tenants() -> None:
    """Create, change and list tenants (customer accounts that own keys, jobs and objects); rotate webhook secrets.

    Example:

    \b
        catalogan tenants create acme --images-per-day 100000 --with-key
    """


def _quota_options(func: Any) -> Any:
    """The options `create` and `set` share: the quotas and the queue allowance."""
    options = [
        click.option(
            "--images-per-day",
            type=click.IntRange(min=1, max=MAX_QUOTA),
            default=None,
            help="Quota of images per 24 h.",
        ),
        click.option(
            "--max-concurrent-jobs",
            type=click.IntRange(min=1, max=MAX_QUOTA),
            default=None,
            help="Quota of unfinished jobs.",
        ),
        click.option(
            "--requests-per-minute",
            type=click.IntRange(min=1, max=MAX_QUOTA),
            default=None,
            help="API rate limit.",
        ),
        click.option(
            "--highest-queue",
            type=click.Choice(QUEUES_BY_PRIORITY),
            default=None,
            help="The highest-priority queue the tenant's jobs may ask for (interactive > bulk > backfill) "
            "[default for a new tenant: bulk].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@tenants.command("create")
@click.argument("name")
@_quota_options
@click.option(
    "--webhook-url",
    default=None,
    callback=webhook_url_option,
    help="Default webhook URL for the tenant's jobs: http(s)://host[:port][/path], no credentials, at most "
    f"{MAX_URL_LENGTH} characters (the API's rule for a job's webhook_url). Its addresses are checked at every "
    "delivery, not here.",
)
@click.option("--with-key", is_flag=True, help="Also create a first API key and print it (shown once).")
@json_option
@one_line_errors
def create(
    name: str,
    images_per_day: int | None,
    max_concurrent_jobs: int | None,
    requests_per_minute: int | None,
    highest_queue: str | None,
    webhook_url: str | None,
    with_key: bool,
    as_json: bool,
) -> None:
    """Create a tenant with a fresh webhook signing secret (printed once).

    NAME is at most 64 characters and one object-key segment (it names the tenant's folder in the store):
    not empty, `.` or `..`, no `/`, backslash, control character or surrounding space.

    Example:

    \b
        catalogan tenants create acme --images-per-day 100000 --with-key --json
    """
    secret = new_secret()
    with transaction(cli_session_factory()) as session:
        tenant = create_tenant(
            session,
            name,
            webhook_url=webhook_url,
            images_per_day=images_per_day,
            max_concurrent_jobs=max_concurrent_jobs,
            requests_per_minute=requests_per_minute,
            highest_queue=highest_queue,
        )
        session.flush()
        session.execute(update(Tenant).where(Tenant.id == tenant.id).values(webhook_secret=secret))
        issued = create_api_key(session, tenant.id, name="default") if with_key else None
        result: dict[str, Any] = {"id": tenant.id, "name": name, "webhook_secret": secret}
    if issued is not None:
        result["api_key"] = issued.clear_key
        result["api_key_id"] = issued.key_id
    if as_json:
        print_json(result)
        return
    click.echo(f"tenant {name} created: {result['id']}")
    click.echo(f"webhook secret (shown once): {secret}")
    if issued is not None:
        click.echo(f"API key {issued.key_id} (shown once): {issued.clear_key}")


@tenants.command("set")
@click.argument("name")
@_quota_options
@json_option
@one_line_errors
def set_limits(
    name: str,
    images_per_day: int | None,
    max_concurrent_jobs: int | None,
    requests_per_minute: int | None,
    highest_queue: str | None,
    as_json: bool,
) -> None:
    """Change a tenant's quotas or queue allowance (options not given stay as they are); applies to the next
    request or submit.

    Example:

    \b
        catalogan tenants set acme --highest-queue interactive --images-per-day 200000
    """
    changes = {
        "images_per_day": images_per_day,
        "max_concurrent_jobs": max_concurrent_jobs,
        "requests_per_minute": requests_per_minute,
        "highest_queue": highest_queue,
    }
    if all(value is None for value in changes.values()):
        raise click.UsageError(
            "give at least one of --images-per-day, --max-concurrent-jobs, --requests-per-minute, --highest-queue"
        )
    with transaction(cli_session_factory()) as session:
        tenant = get_tenant_by_name(session, name)
        set_tenant_limits(
            tenant,
            images_per_day=images_per_day,
            max_concurrent_jobs=max_concurrent_jobs,
            requests_per_minute=requests_per_minute,
            highest_queue=highest_queue,
        )
        session.flush()
        result = {"id": tenant.id, "name": tenant.name, **{key: getattr(tenant, key) for key in changes}}
    if as_json:
        print_json(result)
        return
    click.echo(f"tenant {name} updated: " + ", ".join(f"{key}={result[key]}" for key in changes))


@tenants.command("ls")
@json_option
@one_line_errors
def list_tenants(as_json: bool) -> None:
    """List tenants with their quotas, queue allowance and number of live keys.

    Example:

    \b
        catalogan tenants ls --json
    """
    with cli_session_factory()() as session:
        live_keys = (
            select(ApiKey.tenant_id, func.count().label("keys"))
            .where(ApiKey.revoked_at.is_(None))
            .group_by(ApiKey.tenant_id)
            .subquery()
        )
        rows = session.execute(
            select(Tenant, func.coalesce(live_keys.c["keys"], 0))
            .join(live_keys, live_keys.c.tenant_id == Tenant.id, isouter=True)
            .order_by(Tenant.name)
        ).all()
    data = [
        {
            "id": tenant.id,
            "name": tenant.name,
            "images_per_day": tenant.images_per_day,
            "max_concurrent_jobs": tenant.max_concurrent_jobs,
            "requests_per_minute": tenant.requests_per_minute,
            "highest_queue": tenant.highest_queue,
            "webhook_url": tenant.webhook_url,
            "keys": keys,
            "created_at": tenant.created_at,
        }
        for tenant, keys in rows
    ]
    print_rows(data, COLUMNS, as_json=as_json, title="tenants")


@tenants.command("rotate-webhook-secret")
@click.argument("name")
@click.option(
    "--grace-hours",
    type=FiniteFloat(0, MAX_WEBHOOK_SECRET_GRACE.total_seconds() / 3600),
    default=24.0,
    show_default=True,
    help="Hours the old secret keeps signing next to the new one (0: it stops at once, for a leaked secret).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def rotate_webhook_secret(name: str, grace_hours: float, as_json: bool) -> None:
    """Give tenant NAME a new webhook signing secret (printed once).

    Every delivery attempt from then on, retries of earlier events included, is signed with the new secret.
    For --grace-hours (24 by default, at most 168) each attempt also carries a second signature made with the
    old secret, so a receiver still checking the old one accepts it while it switches over; then the old one
    stops. A leaked secret: --grace-hours 0 (an attempt already in flight may still carry the old one).

    Example:

    \b
        catalogan tenants rotate-webhook-secret acme --json
        catalogan tenants rotate-webhook-secret acme --grace-hours 0
    """
    secret = new_secret()
    grace = dt.timedelta(hours=grace_hours)
    with transaction(cli_session_factory()) as session:
        tenant = set_webhook_secret(session, name, secret, grace=grace)
        until = tenant.previous_webhook_secret_until
        result = {
            "id": tenant.id,
            "name": name,
            "webhook_secret": secret,
            "previous_secret_signs_until": until.isoformat() if until else None,
        }
    if as_json:
        print_json(result)
        return
    click.echo(f"tenant {name}: new webhook secret (shown once): {secret}")
    if until is not None:
        click.echo(f"the old secret also signs every attempt until {until.isoformat(timespec='seconds')}")
