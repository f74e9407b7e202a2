"""`catalogan serve`: run the HTTP API under uvicorn."""

from __future__ import annotations

import ipaddress
import re
import socket

import click

from db.cli_support import one_line_errors
from db.errors import ConfigError
from db.pipeline_settings import ChunkSizeSettings
from scheduler.settings import DEFAULT_LIMIT_CONCURRENCY, ApiSettings

# uvicorn.config.LOG_LEVELS' names, listed here so the root command stays light (a test tries each of them).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


# A host name: dot-separated labels of letters, digits, hyphens (and underscores, which container networks use).
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def bind_host_problem(host: str) -> str | None:
    """Why `host` cannot be an address to bind to (None when it can): an IP address, or a name that resolves.

    Checked before uvicorn starts: uvicorn printed "[Errno -2] Name or service not known" and exited 3."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not HOST_NAME.fullmatch(host):
        return "must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name"
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        return f"the host name does not resolve to an address ({exc})"
    return None


def check_api_settings() -> ApiSettings:
    """Read every setting an API process reads, and apply the production refusal, in this process; returns the
    API's own settings.

    uvicorn builds the app in each of its worker processes: with `--workers 2` a setting the app refuses there
    was a traceback per child and a restart, forever (compose restarted nothing: the supervisor never exited),
    and `CATALOGAN_PUBLISH_WINDOW_CHUNKS`, read per request, failed only when a submit published. Checked here,
    a bad setting is one line naming the variable and exit 6 before any child starts."""
    from db.pipeline_settings import PublishWindowSettings
    from db.settings import BrokerSettings, DatabaseSettings, DataSettings, StorageSettings
    from scheduler.api.app import refuse_embedded_defaults
    from scheduler.console.settings import ConsoleSettings
    from scheduler.settings import WebhookSettings

    settings = ApiSettings()
    ChunkSizeSettings()  # the per-queue chunk sizes planning reads
    PublishWindowSettings()  # read per submit
    WebhookSettings()
    ConsoleSettings()
    DataSettings()
    database, storage, broker = DatabaseSettings(), StorageSettings(), BrokerSettings()
    if settings.environment == "production":
        refuse_embedded_defaults(database, storage, broker)  # what `build_services` refuses in each process
    return settings


def host_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--host`: a usage error naming the option when it cannot be bound to (`bind_host_problem`)."""
    if value is not None and (problem := bind_host_problem(value)) is not None:
        raise click.BadParameter(f"{value!r}: {problem}", param=param)
    return value


@click.command("serve")
@click.option(
    "--host",
    default=None,
    callback=host_option,
    help="Bind address: an IP address or a host name that resolves (default CATALOGAN_API_HOST, 127.0.0.1).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port, 1-65535 (default CATALOGAN_API_PORT, 8000).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="uvicorn worker processes, at least 1 (default CATALOGAN_API_WORKERS, 1).",
)
@click.option(
    "--limit-concurrency",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Connections and requests one uvicorn process serves at once (idle keep-alive connections count); "
    f"beyond it, 503 at once (default CATALOGAN_API_LIMIT_CONCURRENCY, {DEFAULT_LIMIT_CONCURRENCY}). Idle "
    "connections close after CATALOGAN_API_TIMEOUT_KEEP_ALIVE_SECONDS (5); on SIGTERM, requests still running "
    "after CATALOGAN_API_TIMEOUT_GRACEFUL_SHUTDOWN_SECONDS (30) are cancelled.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="uvicorn log level.",
)
@one_line_errors
def serve(
    host: str | None, port: int | None, workers: int | None, limit_concurrency: int | None, log_level: str
) -> None:
    """Serve the HTTP API and the web console at /console/ (FastAPI under uvicorn); settings come from
    CATALOGAN_* variables.

    Example:

    \b
        CATALOGAN_DATABASE_URL=postgresql://postgres@localhost/catalogan \\
        CATALOGAN_BROKER_URL=redis://localhost:6379/0 catalogan serve --host 0.0.0.0 --port 8000
        catalogan serve --limit-concurrency 256   # a smaller box: 503 beyond 256 at once
    """
    import uvicorn

    settings = check_api_settings()  # a bad setting is one line here, not a traceback in every uvicorn child
    if host is None and (problem := bind_host_problem(settings.api_host)) is not None:
        raise ConfigError(f"CATALOGAN_API_HOST: {problem}")
    uvicorn.run(
        "scheduler.api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers or settings.api_workers,
        log_level=log_level,
        proxy_headers=True,
        limit_concurrency=limit_concurrency or settings.api_limit_concurrency,
        timeout_keep_alive=settings.api_timeout_keep_alive_seconds,
        timeout_graceful_shutdown=settings.api_timeout_graceful_shutdown_seconds,
    )
