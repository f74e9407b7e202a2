"""`catalogan workers`: live workers (Celery ping), what they hold (SQL leases), and queue depths (Redis LLEN)."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy import func, select

from db.chunks import lease_clock
from db.cli_support import one_line_errors
from db.messaging import QUEUE_NAMES, make_celery_app, queue_depth
from db.settings import BrokerSettings, DataSettings
from db.status import ChunkStatus
from db.tables import Chunk
from scheduler.cli.database import cli_session_factory
from scheduler.cli.output import current_format, json_option, print_json, print_table

PING_TIMEOUT_SECONDS = 2.0


def queue_depths(broker: BrokerSettings, data: DataSettings) -> dict[str, int]:
    """Messages waiting per queue: Redis LLEN, or the embedded broker's files."""
    if not broker.embedded and broker.broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker.broker_url, socket_connect_timeout=5)
        try:
            return {queue: int(client.llen(queue)) for queue in QUEUE_NAMES}
        finally:
            client.close()
    app = make_celery_app(broker, data)
    return {queue: queue_depth(app, queue) for queue in QUEUE_NAMES}


def ping_workers(broker: BrokerSettings, data: DataSettings) -> list[str]:
    """Names of the workers that answer a Celery ping (only those with remote control enabled answer)."""
    if broker.embedded:
        return []  # the filesystem transport has no broadcast: no pings
    app = make_celery_app(broker, data)
    replies = app.control.inspect(timeout=PING_TIMEOUT_SECONDS).ping() or {}
    return sorted(replies)


def lease_holders() -> list[dict[str, Any]]:
    """Workers holding live chunk leases right now, from SQL (the source of truth), on the lease clock (the
    database's on PostgreSQL), not this host's."""
    with cli_session_factory()() as session:
        rows = session.execute(
            select(Chunk.leased_by, func.count(), func.max(Chunk.lease_expires_at))
            .where(Chunk.status == ChunkStatus.LEASED, Chunk.lease_expires_at > lease_clock(session))
            .group_by(Chunk.leased_by)
        ).all()
    return [{"worker": worker, "chunks": count, "lease_until": until} for worker, count, until in rows]


def alive_on(host: str, broker: BrokerSettings, data: DataSettings) -> list[str]:
    """Workers of `host` that answer a ping or hold a live lease (a busy solo-pool worker does not ping).

    The two name a worker differently: Celery's node name is `name@host`, a lease's holder is `host:pid`
    (`workers.context`), so each is matched on its own form.
    """
    pinged = [name for name in ping_workers(broker, data) if name.endswith(f"@{host}")]
    holding = [str(h["worker"]) for h in lease_holders() if str(h["worker"] or "").startswith(f"{host}:")]
    return sorted({*pinged, *holding})


@click.command("workers")
@click.option(
    "--alive-on",
    "host",
    default=None,
    metavar="HOST",
    help="Healthcheck: exit 0 when a worker of HOST answers a ping or holds a live lease, else 1.",
)
@click.option(
    "--queues",
    "queues_only",
    is_flag=True,
    help="Print the queue depths only (piped, the default listing is the workers alone).",
)
@json_option
@one_line_errors
def workers(host: str | None, queues_only: bool, as_json: bool) -> None:
    """Show live workers (Celery ping and live chunk leases) and the depth of each queue.

    On a terminal it prints both tables; piped (TSV) it prints the workers only, as one table, and
    `--queues` the queue depths; `--json` prints both in one document.

    Example:

    \b
        CATALOGAN_BROKER_URL=redis://localhost:6379/0 catalogan workers --json
        catalogan workers --queues | awk 'NR > 1 && $2 > 1000'   # queues over 1000 deep
    """
    broker, data = BrokerSettings(), DataSettings()
    if host is not None:
        alive = alive_on(host, broker, data)
        if not alive:
            click.echo(f"Error: no worker on {host} answers a ping or holds a lease", err=True)
            sys.exit(1)
        click.echo(" ".join(alive))
        return
    depths = queue_depths(broker, data)
    depth_rows = [{"queue": queue, "depth": depth} for queue, depth in depths.items()]
    if queues_only:
        print_table(depth_rows, ("queue", "depth"), title="queues")
        return
    pinged = ping_workers(broker, data)
    holders = lease_holders()
    names = sorted({*pinged, *(str(h["worker"]) for h in holders if h["worker"])})
    by_name = {str(h["worker"]): h for h in holders}
    rows = [
        {
            "worker": name,
            "ping": "ok" if name in pinged else "-",
            "chunks": by_name.get(name, {}).get("chunks", 0),
            "lease_until": by_name.get(name, {}).get("lease_until"),
        }
        for name in names
    ]
    if as_json:
        print_json({"workers": rows, "queues": depths})
        return
    print_table(rows, ("worker", "ping", "chunks", "lease_until"), title="workers")
    if current_format() == "table":
        # A person reads both; piped, a second table glued under the first broke `cut`/`awk` (one header,
        # one line per row): there the depths are `--queues`.
        click.echo()
        print_table(depth_rows, ("queue", "depth"), title="queues")
