"""`catalogan jobs submit|ls|show|watch|cancel|retry|export|shards`: jobs through the HTTP API (built on the SDK).

The API is found with CATALOGAN_API_URL and CATALOGAN_API_KEY. These commands need only the light install
(`pip install catalogan`: httpx, pydantic, click); rich draws the progress bar when it is installed.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import click

from db.cli_support import (
    FiniteFloat,
    creative_control_options,
    job_exit_code,
    one_line_errors,
    output_file,
    output_folder,
)
from db.control_options import check_option_combinations, option_as_typed, parse_image_ref
from db.errors import ConfigError, PlanningError
from db.webhook_events import WEBHOOK_EVENTS
from scheduler.cli.output import json_option, print_json, print_rows
from scheduler.client import API_KEY_ENV, Client, Job, JobPage, spreadsheet_safe
from scheduler.errors import ApiError, ClientError

COLUMNS = ("id", "status", "model", "images", "done", "failed", "progress", "created_at", "finished_at")
MANIFEST_CSV_COLUMNS = (
    "index",
    "sku",
    "category",
    "key",
    "sha256",
    "seed",
    "model_version",
    "status",
    "error",
)


ITEM_FIELD = re.compile(r"^(?:body\.)?items\.(\d+)\.(\w+)$")
# The API's rule for an `Idempotency-Key` (its route's header pattern): 1 to 255 printable ASCII characters,
# none of them a space at either end (HTTP strips those, so the key sent would not be the key given).
IDEMPOTENCY_KEY = re.compile(r"[!-~](?:[ -~]{0,253}[!-~])?")
MAX_PAGE_SIZE = 500  # the API's largest `limit` for GET /v1/jobs
# `jobs watch --interval`: 0 polled the API without pausing; an hour between polls is as slow as is useful.
MIN_WATCH_INTERVAL_SECONDS = 0.1
MAX_WATCH_INTERVAL_SECONDS = 3600.0


def _client() -> Client:
    key = os.environ.get(API_KEY_ENV)
    if not key:
        raise ConfigError(f"no API key: set {API_KEY_ENV} (create one with `catalogan keys create`)")
    try:
        return Client()
    except ClientError as exc:  # the key itself is malformed (the client checks it; nothing is sent)
        raise ConfigError(str(exc)) from exc


def parse_categories(options: Sequence[str]) -> list[dict[str, Any]]:
    """`--category sneaker=16` options as job items; a malformed one is a usage error naming it."""
    items = []
    for option in options:
        name, sep, count = option.partition("=")
        if not sep or not name.strip() or not re.fullmatch(r"-?\d+", count.strip()):
            raise click.BadParameter(
                f"{option!r}: must be CATEGORY=COUNT, e.g. sneaker=16", param_hint="--category"
            )
        items.append({"category": name.strip(), "count": int(count)})
    return items


def cli_shaped(
    error: ApiError,
    options: Sequence[str],
    registered: Sequence[str] | None,
    typed: Mapping[str, Any] | None = None,
) -> str:
    """The API's 422 as the user typed it: `items.0.count` becomes `--category bag=0`, `variation.source`
    `--variation-of 'J/3'` (`typed`: each creative-control option's value as given); a bad model lists the
    registered ones."""
    lines = []
    for entry in error.problem.get("errors") or []:
        field, message = str(entry.get("field", "")), str(entry.get("message", ""))
        match = ITEM_FIELD.match(field)
        control = option_as_typed(field.removeprefix("body."), typed or {})
        if control is not None:
            lines.append(f"{control}: {message.split(': ', 1)[-1] if message.startswith(field) else message}")
        elif match and int(match.group(1)) < len(options):
            name = match.group(2)
            lines.append(f"--category {options[int(match.group(1))]}: {name}: {_unprefixed(message, name)}")
        elif field.endswith("model"):
            lines.append(f"--model: {_unprefixed(message, 'model')}")
        elif field.lower().endswith("idempotency-key"):  # `Idempotency-Key` reused with another request
            lines.append(f"--idempotency-key: {_unprefixed(message, 'Idempotency-Key')}")
        else:
            lines.append(f"{field}: {_unprefixed(message, field)}" if field else message)
    text = "; ".join(lines) or str(error.problem.get("detail") or error)
    if registered is not None and ("model" in text.lower()):
        text += f" (registered: {', '.join(registered) or 'none'}; see `catalogan models list`)"
    return text


def _unprefixed(message: str, field: str) -> str:
    # Some API messages already start with their field's name ("queue: 'interactive' is above ..."): name it once.
    return message.removeprefix(f"{field}: ")


def _row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "model": f"{job.model_name}@{job.model_version}" if job.model_name else None,
        "images": job.images_total,
        "done": job.images_done,
        "failed": job.images_failed,
        "progress": f"{job.progress:.0%}",
        "eta_seconds": job.eta_seconds,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def _job_json(job: Job) -> dict[str, Any]:
    return dict(job.raw) if job.raw else {k: v for k, v in asdict(job).items() if k != "raw"}


def metadata_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--metadata KEY=VALUE` (repeatable) as a dict; a pair without `=` is a usage error naming the option.
    The bounds are the API's (its 422 names `metadata` and the rule)."""

    def parse(_ctx: click.Context, _param: click.Parameter, pairs: tuple[str, ...]) -> dict[str, str]:
        values: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
            values[key] = value
        return values

    return click.option("--metadata", multiple=True, metavar="KEY=VALUE", callback=parse, help=help_text)


def idempotency_key_option(_ctx: click.Context, _param: click.Parameter, key: str | None) -> str | None:
    """`--idempotency-key` when the API would take it; a usage error naming the option and the rule otherwise,
    before anything is sent."""
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise click.BadParameter(
            f"{key!r}: 1 to 255 printable ASCII characters, no space at either end",
            param_hint="--idempotency-key",
        )
    return key


@click.group("jobs")
def jobs() -> None:
    """List, follow, cancel, retry and export jobs through the API.

    Example:

    \b
        CATALOGAN_API_URL=http://localhost:8000 CATALOGAN_API_KEY=cg_... catalogan jobs ls --status running
    """


@jobs.command("submit")
@click.option(
    "--category",
    "categories",
    multiple=True,
    metavar="CATEGORY=COUNT",
    help="Images of one category; repeat for more (e.g. --category sneaker=16). Required unless "
    "--variation-of or --interpolate.",
)
@click.option(
    "--model", default=None, help="NAME (its production version) or NAME@VERSION [default: the API's]."
)
@click.option("--seed", type=int, default=None, help="Job seed (same seed, same images) [default: chosen].")
@click.option(
    "--output-format",
    type=click.Choice(["png", "webp", "tar"]),
    default=None,
    help="png (default), lossless webp, or tar (WebDataset shards).",
)
@click.option("--webhook-url", default=None, help="Where to POST job events (signed).")
@click.option(
    "--webhook-event",
    "webhook_events",
    multiple=True,
    type=click.Choice(WEBHOOK_EVENTS),
    help="Send only this event (repeat for more) [default: every event].",
)
@click.option(
    "--queue",
    type=click.Choice(("interactive", "bulk", "backfill")),
    default=None,
    help="Priority: interactive > bulk (default) > backfill, up to the tenant's allowance.",
)
@metadata_option("Label the job (KEY of [a-z0-9_.-]); repeat for more, at most 16.")
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    default=None,
    help="Days the job is kept once finished, then deleted [default: the API's, 30].",
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    default=None,
    callback=idempotency_key_option,
    help="Submitting again with the same KEY and options returns the job the first submit made instead of a "
    "second one (rerun a submit that exited 5 safely); the same KEY with other options is exit 2. 1 to 255 "
    "printable ASCII characters [default: a fresh key per run].",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the job until it finishes; exit 10 when it completed with failures, 7 when it failed or was "
    "cancelled.",
)
@creative_control_options
@json_option
@one_line_errors
def submit(
    categories: tuple[str, ...],
    model: str | None,
    seed: int | None,
    output_format: str | None,
    webhook_url: str | None,
    webhook_events: tuple[str, ...],
    queue: str | None,
    metadata: dict[str, str],
    retention_days: int | None,
    idempotency_key: str | None,
    wait: bool,
    truncation: float | None,
    variation_of: str | None,
    strength: float | None,
    count: int | None,
    interpolate: tuple[str, str] | None,
    frames: int | None,
    as_json: bool,
) -> None:
    """Submit a job and print its id (with --wait, follow it to the end).

    A job of --category items, or of variations (--variation-of with --strength and --count) or frames
    (--interpolate with --frames) of images you already have: the options and their rules are `catalogan
    generate`'s (docs/controlling.md). A source is JOB_ID/INDEX or the path of the delivered PNG.

    Example:

    \b
        catalogan jobs submit --category sneaker=16 --category dress=8 --seed 7 --metadata batch=spring --wait
        catalogan jobs submit --category sneaker=16 --seed 7 --idempotency-key nightly-2027-03-01 --wait
        catalogan jobs submit --variation-of out/dress/00000003.png --strength 0.3 --count 8 --truncation 0.9
        catalogan jobs submit --interpolate 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f/0 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f/5 --frames 8
    """
    typed: dict[str, Any] = {
        "--truncation": truncation,
        "--variation-of": variation_of,
        "--strength": strength,
        "--count": count,
        "--interpolate": interpolate,
        "--frames": frames,
    }
    # Everything typed is checked before anything is sent (a source file is read here, never uploaded).
    check_option_combinations({"--category": bool(categories)} | {k: v is not None for k, v in typed.items()})
    if not categories and variation_of is None and interpolate is None:
        raise PlanningError(
            "--category", "required", "--category: give CATEGORY=COUNT, or --variation-of / --interpolate"
        )
    items = parse_categories(categories)
    sources = [parse_image_ref("--variation-of", variation_of)] if variation_of is not None else []
    sources += [parse_image_ref("--interpolate", value) for value in interpolate or ()]
    common: dict[str, Any] = {
        "model": model,
        "output_format": output_format,
        "metadata": metadata or None,
        "retention_days": retention_days,
        "queue": queue,
        "webhook_events": list(dict.fromkeys(webhook_events)) or None,
    }
    with _client() as client:
        try:
            if variation_of is not None:
                assert strength is not None and count is not None  # check_option_combinations
                job = client.submit_variations(
                    sources[0],
                    count=count,
                    strength=strength,
                    seed=seed,
                    truncation=truncation,
                    webhook_url=webhook_url,
                    idempotency_key=idempotency_key,
                    **{name: value for name, value in common.items() if value is not None},
                )
            elif interpolate is not None:
                assert frames is not None  # check_option_combinations
                job = client.submit_interpolation(
                    sources[0],
                    sources[1],
                    frames=frames,
                    webhook_url=webhook_url,
                    idempotency_key=idempotency_key,
                    **{name: value for name, value in {**common, "seed": seed}.items() if value is not None},
                )
            else:
                job = client.submit_job(
                    items,
                    seed=seed,
                    webhook_url=webhook_url,
                    truncation=truncation,
                    idempotency_key=idempotency_key,
                    **common,
                )
        except ApiError as exc:
            if exc.status not in (404, 422):
                raise
            text = cli_shaped(exc, categories, None, typed)
            registered = None
            if "model" in text.lower():
                registered = [f"{m.name}@{m.version} ({m.status})" for m in client.list_models()]
            raise click.UsageError(cli_shaped(exc, categories, registered, typed)) from exc
        if job.replayed:
            click.echo(f"job {job.id} was already submitted with this --idempotency-key", err=True)
        if wait:
            click.echo(f"job {job.id} {job.status}", err=True)
            job = follow(client, job.id, 1.0)
    if as_json:
        print_json(_job_json(job))
    else:
        click.echo(job.id)
    if wait and job.status != "succeeded":
        sys.exit(job_exit_code(job.status))


@jobs.command("ls")
@click.option(
    "--status",
    type=click.Choice(
        ["queued", "running", "succeeded", "completed_with_failures", "failed", "cancelling", "cancelled"]
    ),
    default=None,
    help="Only jobs in this status.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=50,
    show_default=True,
    help=f"How many jobs (one page, at most {MAX_PAGE_SIZE}); with --all, the size of each page fetched.",
)
@click.option(
    "--cursor",
    default=None,
    help="Start at this page: the `next cursor: ...` an earlier `jobs ls` printed on stderr.",
)
@click.option(
    "--all",
    "every_page",
    is_flag=True,
    help="Follow the cursors to the last page and list every job (from --cursor on, when given).",
)
@metadata_option("Only jobs labelled KEY=VALUE; repeat to require several.")
@json_option
@one_line_errors
def list_jobs(
    status: str | None,
    limit: int,
    cursor: str | None,
    every_page: bool,
    metadata: dict[str, str],
    as_json: bool,
) -> None:
    """List the tenant's jobs, newest first, one page at a time (--all: every page). When more jobs follow,
    stderr says `next cursor: CURSOR` (give it to --cursor); stdout stays the listing, so `--json` is a list.

    Example:

    \b
        catalogan jobs ls --status failed --metadata batch=spring --all --json
    """
    with _client() as client:
        try:
            page = _list_pages(client, status, limit, cursor, metadata or None, every_page)
        except ApiError as exc:
            fields = [str(entry.get("field", "")) for entry in exc.problem.get("errors") or []]
            if exc.status == 422 and any(field.endswith("cursor") for field in fields):
                raise click.BadParameter("not a cursor this API issued", param_hint="--cursor") from exc
            raise
    if as_json:
        print_json([_job_json(job) for job in page.jobs])
    else:
        print_rows([_row(job) for job in page.jobs], COLUMNS, as_json=False, title="jobs")
    if page.next_cursor:
        click.echo(f"next cursor: {page.next_cursor}", err=True)


def _list_pages(
    client: Client,
    status: str | None,
    limit: int,
    cursor: str | None,
    metadata: dict[str, str] | None,
    every_page: bool,
) -> JobPage:
    """The page at `cursor`, or with `every_page` the jobs of it and every page after it as one page."""
    page = client.list_jobs(status=status, limit=limit, cursor=cursor, metadata=metadata)
    jobs, seen = list(page.jobs), {cursor}
    while every_page and page.next_cursor:
        if page.next_cursor in seen:  # an API handing back a cursor twice would page forever
            raise ClientError(f"the API returned the cursor {page.next_cursor!r} twice; stopped listing")
        seen.add(page.next_cursor)
        page = client.list_jobs(status=status, limit=limit, cursor=page.next_cursor, metadata=metadata)
        jobs.extend(page.jobs)
    return JobPage(jobs, page.next_cursor)


@jobs.command("show")
@click.argument("job_id")
@json_option
@one_line_errors
def show(job_id: str, as_json: bool) -> None:
    """Show one job: status, counts, timestamps, model version, ETA.

    Example:

    \b
        catalogan jobs show 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f
    """
    with _client() as client:
        job = client.get_job(job_id)
    if as_json:
        print_json(_job_json(job))
        return
    for name, value in _row(job).items():
        click.echo(f"{name:>12}: {'-' if value is None else value}")
    if job.expires_at is not None:
        click.echo(f"{'expires_at':>12}: {job.expires_at}")
    click.echo(f"{'queue':>12}: {job.queue}")
    if job.webhook_events is not None:
        click.echo(f"{'webhooks':>12}: " + (" ".join(job.webhook_events) or "none"))
    if job.metadata:
        click.echo(f"{'metadata':>12}: " + " ".join(f"{k}={v}" for k, v in sorted(job.metadata.items())))
    for name, value in control_lines(job):
        click.echo(f"{name:>12}: {value}")
    if job.error:
        click.echo(f"{'error':>12}: {job.error}")


def _ref_text(source: Mapping[str, Any]) -> str:
    return f"{source.get('job_id')}/{source.get('index')}"


def control_lines(job: Job) -> list[tuple[str, str]]:
    """The job's creative control as `jobs show` prints it: ψ, the source and strength of variations, the ends
    and frames of an interpolation (nothing for a plain job)."""
    lines = []
    if job.truncation is not None:
        lines.append(("truncation", f"{job.truncation:g}"))
    if job.variation:
        variation = job.variation
        lines.append(
            (
                "variation",
                f"of {_ref_text(variation.get('source') or {})}, strength {variation.get('strength')}, "
                f"count {variation.get('count')}",
            )
        )
    if job.interpolation:
        ends = job.interpolation
        lines.append(
            (
                "interpolate",
                f"{_ref_text(ends.get('start') or {})} .. {_ref_text(ends.get('end') or {})}, "
                f"{ends.get('frames')} frames",
            )
        )
    return lines


@jobs.command("watch")
@click.argument("job_id")
@click.option(
    "--interval",
    type=FiniteFloat(min=MIN_WATCH_INTERVAL_SECONDS, max=MAX_WATCH_INTERVAL_SECONDS),
    default=1.0,
    show_default=True,
    help=f"Seconds between polls, {MIN_WATCH_INTERVAL_SECONDS:g} to {MAX_WATCH_INTERVAL_SECONDS:g} (steady: an "
    "operator watching sees each change).",
)
@one_line_errors
def watch(job_id: str, interval: float) -> None:
    """Follow a job with a live progress bar until it finishes; exit 10 when it completed with failures, 7
    when it failed or was cancelled.

    Example:

    \b
        catalogan jobs watch 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f --interval 2
    """
    with _client() as client:
        job = follow(client, job_id, interval)
    click.echo(f"job {job.id} {job.status}")
    if job.status != "succeeded":
        sys.exit(job_exit_code(job.status))


@jobs.command("cancel")
@click.argument("job_id")
@json_option
@one_line_errors
def cancel(job_id: str, as_json: bool) -> None:
    """Ask a job to stop; finished images stay.

    Example:

    \b
        catalogan jobs cancel 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f
    """
    with _client() as client:
        job = client.cancel_job(job_id)
    if as_json:
        print_json(_job_json(job))
    else:
        click.echo(f"job {job.id} {job.status}")


@jobs.command("delete")
@click.argument("job_id")
@one_line_errors
def delete(job_id: str) -> None:
    """Delete a finished job: its images, manifests and shards, then the job (an unfinished one: exit 4, cancel
    it first).

    Example:

    \b
        catalogan jobs delete 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f
    """
    with _client() as client:
        client.delete_job(job_id)
    click.echo(f"job {job_id} deleted")


@jobs.command("retry")
@click.argument("job_id")
@json_option
@one_line_errors
def retry(job_id: str, as_json: bool) -> None:
    """Run a job's failed images again (its quarantined chunks).

    Example:

    \b
        catalogan jobs retry 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f
    """
    with _client() as client:
        job = client.retry_job(job_id)
    if as_json:
        print_json(_job_json(job))
    else:
        click.echo(f"job {job.id} {job.status}: {job.images_total - job.images_done} images to run again")


def follow(client: Client, job_id: str, interval: float) -> Job:
    """Poll the job until it finishes: a live bar on a terminal (with rich installed), else a line per change."""
    # The light client install has no rich: then, and when stderr is not a terminal, one line per change.
    if importlib.util.find_spec("rich") is None or not sys.stderr.isatty():
        last: tuple[str, int, int] | None = None

        def line(job: Job) -> None:
            nonlocal last
            state = (job.status, job.images_done, job.images_failed)
            if state != last:
                last = state
                click.echo(
                    f"{job.status} {job.images_done}/{job.images_total} images, {job.images_failed} failed",
                    err=True,
                )

        return client.wait(job_id, progress=line, poll_seconds=interval, max_poll_seconds=interval)
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.fields[status]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed}/{task.total} images, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("job", total=None, status="…", failed=0)

        def update(job: Job) -> None:
            finished = job.images_done + job.images_failed + job.images_rejected
            progress.update(
                task, total=job.images_total, completed=finished, status=job.status, failed=job.images_failed
            )

        return client.wait(job_id, progress=update, poll_seconds=interval, max_poll_seconds=interval)


def write_manifest_csv(rows: Iterable[dict[str, Any]], handle: TextIO, *, raw: bool = False) -> int:
    """Write manifest rows to `handle` as CSV, the manifest's columns first and then the first row's others
    (every row of one manifest has the same keys), one row at a time; returns the number of rows. Text a
    spreadsheet would run as a formula (a tenant's SKU `=HYPERLINK(...)`) is made text (`spreadsheet_safe`),
    as in the console's CSV; `raw` writes every value unchanged, for a machine loader (a SKU `-100-BLK` must
    stay `-100-BLK` to join on)."""
    rows = iter(rows)
    first = next(rows, None)
    extra = sorted(set(first or ()) - set(MANIFEST_CSV_COLUMNS))
    writer = csv.DictWriter(handle, fieldnames=[*MANIFEST_CSV_COLUMNS, *extra], extrasaction="ignore")
    writer.writeheader()
    count = 0
    for row in itertools.chain([first] if first is not None else [], rows):
        writer.writerow(row if raw else spreadsheet_safe(row))
        count += 1
    return count


def manifest_csv(rows: Iterable[dict[str, Any]], *, raw: bool = False) -> str:
    """`write_manifest_csv` into a string."""
    out = io.StringIO()
    write_manifest_csv(rows, out, raw=raw)
    return out.getvalue()


def _save_manifest_csv(client: Client, job_id: str, out: Path | None, *, raw: bool) -> None:
    """Stream the job's manifest rows as CSV to stdout or to `out` (a temporary name beside it, renamed when
    complete: after an error `out` is as it was); memory holds one row whatever the job's size."""
    rows = client.iter_manifest_rows(job_id)
    if out is None:
        write_manifest_csv(rows, sys.stdout, raw=raw)
        return
    partial = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with partial.open("w", newline="", encoding="utf-8") as handle:
            write_manifest_csv(rows, handle, raw=raw)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


@jobs.command("export")
@click.argument("job_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet", "csv"]),
    default="jsonl",
    show_default=True,
    help="Manifest format.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=output_file,
    help="Write the manifest here (default: stdout; Parquet needs --out).",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    callback=output_folder,
    help="Also download the images into this folder (checked against their sha256).",
)
@click.option(
    "--raw",
    is_flag=True,
    help="CSV: write every value unchanged, for a program to load (default: spreadsheet-safe, a value starting "
    "with = + - @ gets a leading ' so a spreadsheet shows it as text).",
)
@one_line_errors
def export(job_id: str, fmt: str, out: Path | None, images_dir: Path | None, raw: bool) -> None:
    """Export a finished job's manifest (and optionally its images).

    Example:

    \b
        catalogan jobs export 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f --format csv --out manifest.csv --images out/
        catalogan jobs export 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f --format csv --raw --out for-the-loader.csv
    """
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    if raw and fmt != "csv":
        raise click.UsageError(f"--raw applies to --format csv only (--format {fmt} is written unchanged)")
    with _client() as client:
        # Streamed, never whole in memory: CSV a row at a time, JSONL and Parquet to the file as they arrive.
        if fmt == "csv":
            _save_manifest_csv(client, job_id, out, raw=raw)
        elif out is not None:
            client.download_manifest(job_id, out, format=fmt)
        else:
            for piece in client.iter_manifest_bytes(job_id, format=fmt):
                sys.stdout.buffer.write(piece)
            sys.stdout.buffer.flush()
        saved = client.download(job_id, images_dir) if images_dir is not None else []
    if out is not None:
        click.echo(f"manifest written to {out}", err=True)
    if images_dir is not None:
        click.echo(f"{len(saved)} images written under {images_dir}", err=True)


@jobs.command("shards")
@click.argument("job_id")
@json_option
@one_line_errors
def shards(job_id: str, as_json: bool) -> None:
    """List a finished tar job's WebDataset shards with presigned URLs (its shards/index.json).

    Example:

    \b
        catalogan jobs shards 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f --format tsv | tail -n +2 | cut -f5 | xargs -n1 curl -sO
    """
    with _client() as client:
        index = client.get_shard_index(job_id)
    if as_json:
        print_json(index)
    else:
        print_rows(
            index["shards"], ("first_index", "last_index", "images", "size_bytes", "url"), as_json=False
        )
