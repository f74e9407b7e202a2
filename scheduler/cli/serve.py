"""`catalogan serve`: run the HTTP API under uvicorn."""

from __future__ import annotations

import click

from db.cli_support import one_line_errors
from db.pipeline_settings import ChunkSizeSettings
from scheduler.settings import ApiSettings

# uvicorn.config.LOG_LEVELS' names, listed here so the root command stays light (a test tries each of them).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default CATALOGAN_API_HOST, 127.0.0.1).")
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
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="uvicorn log level.",
)
@one_line_errors
def serve(host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Serve the HTTP API and the web console at /console/ (FastAPI under uvicorn); settings come from
    CATALOGAN_* variables.

    Example:

    \b
        CATALOGAN_DATABASE_URL=postgresql://postgres@localhost/catalogan \\
        CATALOGAN_BROKER_URL=redis://localhost:6379/0 catalogan serve --host 0.0.0.0 --port 8000
    """
    import uvicorn

    settings = ApiSettings()  # validated here so a bad setting is one line, not a worker traceback
    ChunkSizeSettings()  # the per-queue chunk sizes planning reads, checked at start too
    uvicorn.run(
        "scheduler.api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers or settings.api_workers,
        log_level=log_level,
        proxy_headers=True,
    )
