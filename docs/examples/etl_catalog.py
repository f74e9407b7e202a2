"""ETL example: give every SKU of a catalog export that lacks an image a generated one.

    CATALOGAN_API_URL=http://localhost:8000 CATALOGAN_API_KEY=cg_... \\
        python docs/examples/etl_catalog.py catalog.csv images.csv --per-sku 2 --seed 7

Input: a catalog CSV with at least `sku` and `category` columns; rows whose `image_url` column is empty (or
missing) lack an image. Output: one CSV row per generated image — sku, category, index, key, sha256, seed,
model_version, status — i.e. the job's manifest, ready to load back into the catalog: values are written as
the API has them (a SKU `-100-BLK` stays `-100-BLK`, so the loader's join on `sku` matches), not made
spreadsheet-safe. Re-running with the same input and options is safe: the Idempotency-Key is derived from the
input file, --per-sku, --seed and --model, so the API returns the same job.

Errors are one line on stderr (`Error: ...`, naming the file and line, the option or the variable) and an exit
code a scheduler can act on, the same numbers as `catalogan`'s: 2 bad input (the catalog, an option, the output
path, or a row the API refused), 5 the API did not answer, 6 CATALOGAN_API_URL / CATALOGAN_API_KEY missing,
malformed or refused, 7 the job failed or was cancelled, 10 it completed with some images failed. Nothing is
submitted until the catalog and the output path check out.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple, NoReturn
from urllib.parse import urlsplit

from scheduler.client import Client, Job
from scheduler.errors import ApiError, ClientError, TransportError

OUTPUT_COLUMNS = ("sku", "category", "index", "key", "sha256", "seed", "model_version", "status", "error")
REQUIRED_COLUMNS = ("sku", "category")
API_URL_ENV, API_KEY_ENV = "CATALOGAN_API_URL", "CATALOGAN_API_KEY"
DEFAULT_API_URL = "http://127.0.0.1:8000"

# Exit codes: catalogan's own numbers (docs/cli.md), so one runbook covers both.
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 5
EXIT_CONFIG = 6
EXIT_JOB_FAILED = 7
EXIT_COMPLETED_WITH_FAILURES = 10
EXIT_INTERRUPTED = 130

ITEM_FIELD = re.compile(r"^items(?:\.(\d+)|\[(\d+)\])\.(\w+)$")  # the API's 422: items[3].sku or items.3.sku
OPTION_FIELDS = {"seed": "--seed", "model": "--model"}


class EtlError(Exception):
    """Raised for anything the script refuses or cannot do; `main` prints it as one line and exits `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CatalogRow(NamedTuple):
    """A catalog row that lacks an image; `line` is where it is in the file, for error messages."""

    line: int
    sku: str
    category: str


def skus_lacking_images(catalog: Path) -> list[CatalogRow]:
    """The catalog rows whose `image_url` is empty; `EtlError` (bad input) naming the file and line otherwise."""
    try:
        with catalog.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            try:
                header = reader.fieldnames
                if not header:
                    raise EtlError(
                        f"{catalog}: empty file (expected a header with sku,category)", EXIT_BAD_INPUT
                    )
                missing = [column for column in REQUIRED_COLUMNS if column not in header]
                if missing:
                    raise EtlError(
                        f"{catalog}: no {' or '.join(missing)} column (the header is {','.join(header)})",
                        EXIT_BAD_INPUT,
                    )
                rows = []
                for values in reader:
                    row = _catalog_row(catalog, reader.line_num, values)
                    if row is not None:
                        rows.append(row)
                return rows
            except csv.Error as exc:
                raise EtlError(
                    f"{catalog} line {reader.line_num}: not valid CSV ({exc})", EXIT_BAD_INPUT
                ) from exc
    except UnicodeDecodeError as exc:
        raise EtlError(
            f"{catalog}: not UTF-8 text (export the catalog as UTF-8 CSV)", EXIT_BAD_INPUT
        ) from exc
    except FileNotFoundError as exc:
        raise EtlError(f"{catalog}: no such file", EXIT_BAD_INPUT) from exc
    except OSError as exc:  # a folder, no permission, ...
        raise EtlError(f"{catalog}: cannot read it ({exc.strerror or exc})", EXIT_BAD_INPUT) from exc


def _catalog_row(catalog: Path, line: int, row: dict[str | Any, str | Any]) -> CatalogRow | None:
    """One CSV row as a `CatalogRow` when it lacks an image, None when it has one."""
    if str(row.get("image_url") or "").strip():
        return None
    # A short row leaves the missing columns None; a row of the wrong file may hold anything.
    sku, category = (str(row.get(column) or "").strip() for column in REQUIRED_COLUMNS)
    for column, value in (("sku", sku), ("category", category)):
        if not value:
            raise EtlError(f"{catalog} line {line}: empty {column}", EXIT_BAD_INPUT)
    return CatalogRow(line, sku, category)


def check_output(out: Path) -> None:
    """Refuse an output path the manifest cannot be written to, before anything is submitted."""
    if out.is_dir():
        raise EtlError(f"{out}: is a folder (give the manifest CSV's file name)", EXIT_BAD_INPUT)
    folder = out.parent
    if not folder.is_dir():
        raise EtlError(f"{out}: its folder {folder} does not exist", EXIT_BAD_INPUT)
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise EtlError(f"{out}: not writable", EXIT_BAD_INPUT)


def job_items(rows: list[CatalogRow], per_sku: int) -> list[dict[str, Any]]:
    """One job item per SKU: `per_sku` images of its category."""
    return [{"sku": row.sku, "category": row.category, "count": per_sku} for row in rows]


def idempotency_key(catalog: Path, per_sku: int, seed: int | None, model: str | None) -> str:
    """Same input file + options → same key → the API returns the job it already made. Every option that
    changes the request is hashed: the same key with another request (another `--model`) is the API's 422."""
    options = f"|{per_sku}|{seed}"
    if model is not None:  # appended only when given: a run on the default model keeps its earlier key
        options += f"|{model}"
    digest = hashlib.sha256(catalog.read_bytes() + options.encode()).hexdigest()
    return f"etl-{digest[:40]}"


def refused_rows(error: ApiError, catalog: Path, rows: list[CatalogRow], per_sku: int) -> str:
    """The API's 422 as the catalog's lines and the script's options: `items.3.category` becomes
    `catalog.csv line 5 (SKU-9): category: ...`, `items.N.count` `--per-sku N: ...`, `seed` `--seed: ...`."""
    parts = []
    for entry in error.problem.get("errors") or []:
        field = str(entry.get("field", "")).removeprefix("body.")
        message = str(entry.get("message", "")).removeprefix(f"{field}: ")
        match = ITEM_FIELD.match(field)
        position, name = (int(match.group(1) or match.group(2)), match.group(3)) if match else (-1, "")
        if name == "count":
            parts.append(f"--per-sku {per_sku}: {message}")
        elif 0 <= position < len(rows):
            row, text = rows[position], message if message.startswith(name) else f"{name}: {message}"
            parts.append(f"{catalog} line {row.line} ({row.sku}): {text}")
        else:
            parts.append(f"{OPTION_FIELDS.get(field, field)}: {message}")
    return "; ".join(dict.fromkeys(parts)) or str(error)  # one line, each distinct refusal once


def write_manifest_csv(rows: list[dict[str, Any]], out: Path) -> None:
    """Write manifest rows as CSV with the columns a catalog loader expects, every value as the API has it."""
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=OUTPUT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        # Not spreadsheet_safe: its leading ' on a SKU such as `-100-BLK` would break the loader's join on sku.
        writer.writerows(sorted(rows, key=lambda row: row["index"]))


def run(
    catalog: Path,
    out: Path,
    *,
    client: Client,
    per_sku: int = 1,
    seed: int | None = None,
    model: str | None = None,
) -> Job | None:
    """Submit one job for the SKUs lacking images, wait for it, write its manifest to `out`; return the job.
    When every SKU already has an image there is nothing to submit: `out` gets the header alone (a nightly
    run's loader finds an empty manifest, not a stale one) and None is returned.

    Raises `EtlError` for bad input (before anything is submitted) and for a job that did not succeed; the
    SDK's `ApiError` / `TransportError` / `ClientError` for what the API said or did not say.
    """
    rows = skus_lacking_images(catalog)
    check_output(out)
    if not rows:
        try:
            write_manifest_csv([], out)
        except OSError as exc:
            raise EtlError(f"{out}: cannot write the manifest ({exc.strerror or exc})") from exc
        print(
            f"{catalog}: every SKU already has an image; nothing submitted, {out} has no rows",
            file=sys.stderr,
        )
        return None
    try:
        job = client.submit_job(
            job_items(rows, per_sku),
            seed=seed,
            model=model,
            idempotency_key=idempotency_key(catalog, per_sku, seed, model),
        )
    except ApiError as exc:
        if exc.status in (413, 422):  # the API refused part of the input: name the lines and options
            raise EtlError(refused_rows(exc, catalog, rows, per_sku), EXIT_BAD_INPUT) from exc
        raise
    print(f"job {job.id}: {job.images_total} images for {len(rows)} SKUs", file=sys.stderr)

    def report(current: Job) -> None:
        print(
            f"  {current.status:<10} {current.progress:6.1%}  eta {current.eta_seconds or '-'} s",
            file=sys.stderr,
        )

    job = client.wait(job, progress=report, poll_seconds=2.0)
    if job.completed_with_failures:
        raise EtlError(
            f"job {job.id} completed with {job.images_failed} of {job.images_total} images failed: "
            f"`catalogan jobs retry {job.id}`, then rerun this command",
            EXIT_COMPLETED_WITH_FAILURES,
        )
    if job.status != "succeeded":
        raise EtlError(f"job {job.id} ended {job.status}: {job.error}", EXIT_JOB_FAILED)
    try:
        write_manifest_csv(client.manifest_rows(job), out)
    except OSError as exc:
        raise EtlError(f"{out}: cannot write the manifest ({exc.strerror or exc})") from exc
    print(f"manifest of {job.images_done} images written to {out}", file=sys.stderr)
    return job


def connect() -> Client:
    """A client for CATALOGAN_API_URL with CATALOGAN_API_KEY; `EtlError` (config) naming a bad variable."""
    url = os.environ.get(API_URL_ENV) or DEFAULT_API_URL
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number in 0..65535
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise EtlError(f"{API_URL_ENV}={url!r}: expected http(s)://HOST[:PORT]", EXIT_CONFIG)
    if not os.environ.get(API_KEY_ENV):
        raise EtlError(f"{API_KEY_ENV} is not set (create a key with `catalogan keys create`)", EXIT_CONFIG)
    try:
        return Client(url, os.environ[API_KEY_ENV])
    except ClientError as exc:  # a malformed key: the SDK names the variable, never the key
        raise EtlError(str(exc), EXIT_CONFIG) from exc


def api_failure(exc: ClientError) -> EtlError:
    """What the SDK raised, as one line and an exit code."""
    if isinstance(exc, TransportError):  # after the SDK's retries
        return EtlError(f"the API did not answer ({exc})", EXIT_UNAVAILABLE)
    status = getattr(exc, "status", None)
    if status == 401:
        return EtlError(f"{API_KEY_ENV} was refused by the API ({exc})", EXIT_CONFIG)
    if isinstance(status, int) and 300 <= status < 400:  # the API never redirects: the URL is not its own
        return EtlError(str(exc), EXIT_CONFIG)
    if status == 404:  # the script asks only for its own job: another server, or a path after the host
        return EtlError(f"{exc}: is {API_URL_ENV} the API's own address?", EXIT_CONFIG)
    if status == 429 or (isinstance(status, int) and status >= 500):
        return EtlError(f"the API is unavailable ({exc})", EXIT_UNAVAILABLE)
    return EtlError(str(exc))


class OneLineParser(argparse.ArgumentParser):
    """argparse with a bad option reported in one line (the usage stays in --help), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"Error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An option value that must be a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: the exit code (0 when the manifest was written)."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("catalog", type=Path, help="catalog CSV (sku, category, image_url, ...)")
    parser.add_argument("out", type=Path, help="where to write the manifest CSV")
    parser.add_argument("--per-sku", type=positive_int, default=1, help="images per SKU")
    parser.add_argument("--seed", type=int, default=None, help="job seed (same seed = same images)")
    parser.add_argument("--model", default=None, help="model name or name@version (default: production)")
    args = parser.parse_args(argv)
    try:
        with connect() as client:
            run(args.catalog, args.out, client=client, per_sku=args.per_sku, seed=args.seed, model=args.model)
    except ClientError as exc:
        return fail(api_failure(exc))
    except EtlError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("interrupted: a submitted job goes on; rerun the same command to wait for it", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def fail(error: EtlError) -> int:
    """Print the error as one line on stderr; return its exit code."""
    print(f"Error: {error}", file=sys.stderr)
    return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
