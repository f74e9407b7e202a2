"""SKU manifests that clients upload (or point to with `s3://`): CSV, JSONL or Parquet → job items.

Columns: `category` (required), `count` (default 1), `sku`, `client_item_id`. Unknown columns are
ignored so that a catalog export can be sent as is. A row that breaks a rule is a 422 naming the row
and the column (`file.row[3].count`).

Bounds, each checked before the work it bounds (a hostile file must not cost the API memory or CPU):

- rows: at most `max_items`. Parquet's row count is read from its footer and refused before any page is
  decoded; CSV and JSONL are parsed row by row and stop at the first row over the limit.
- decoded bytes: at most `max_decoded_bytes` of cell text. Parquet (`scheduler.api.parquet_manifests`): the
  footer's length, its lists, columns and row groups are bounded before pyarrow parses or reads them, every
  page header of the kept columns is read to bound what decompression allocates, then string columns are read
  dictionary-encoded in record batches and each batch's decoded length is counted before it becomes Python
  objects (a few KB of dictionary-encoded file can decode to gigabytes); a cell over `MAX_CELL_BYTES` is
  refused the same way. CSV and JSONL text is decoded incrementally and is never larger than the file.
- a CSV cell over the `csv` module's field limit, a JSONL line nested deeper than the JSON parser allows and
  a JSONL line over `MAX_JSONL_LINE_BYTES` are 422s naming the row, never a 500.
- `manifest_uri`: only under the tenant's own upload prefix in catalogan's store
  (`<store>/<tenant>/uploads/...`) or under an `s3://` prefix the operator allowed for that tenant
  (`CATALOGAN_MANIFEST_URI_ALLOWED_PREFIXES`); its size comes from a HEAD and is refused over
  `manifest_max_bytes` before the GET, which itself asks for no more than that many bytes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from pydantic import ValidationError

from db.errors import ObjectNotFoundError, StorageError, TransientStorageError
from db.job_specs import MAX_ITEMS_PER_JOB
from db.storage.base import ObjectStore
from scheduler.api.parquet_manifests import ParquetBounds, parquet_rows
from scheduler.api.schemas import ItemCreate
from scheduler.errors import RequestValidationError
from scheduler.settings import DEFAULT_MANIFEST_MAX_DECODED_BYTES as DEFAULT_MAX_DECODED_BYTES
from scheduler.settings import ApiSettings

FORMATS = ("csv", "jsonl", "parquet")
COLUMNS = ("category", "count", "sku", "client_item_id")
MIB = 1024 * 1024
# The largest object a `manifest_uri` may name (checked with a HEAD before the GET).
DEFAULT_MANIFEST_MAX_BYTES = 64 * MIB
MAX_JSONL_LINE_BYTES = 64 * 1024
UPLOADS_FOLDER = "uploads"  # a tenant's manifests live under <store>/<tenant>/uploads/


def manifest_format(filename: str, content_type: str | None = None) -> str:
    """`csv`, `jsonl` or `parquet`, from the file name's extension (or the content type)."""
    lowered = filename.lower()
    for name in FORMATS:
        if lowered.endswith("." + name):
            return name
    if lowered.endswith(".ndjson"):
        return "jsonl"
    by_type = {"text/csv": "csv", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl"}
    if content_type and content_type.split(";")[0].strip() in by_type:
        return by_type[content_type.split(";")[0].strip()]
    raise RequestValidationError("file", "format", f"file {filename!r}: name it *.csv, *.jsonl or *.parquet")


def _rows_csv(data: IO[bytes]) -> Iterator[Mapping[str, Any]]:
    # Decoded incrementally: the text is never held whole next to the bytes.
    text = io.TextIOWrapper(data, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text)
    try:
        try:
            fieldnames = reader.fieldnames
        except csv.Error as exc:
            raise RequestValidationError("file.row[0]", "csv", f"file header: {exc}") from exc
        if fieldnames is None or "category" not in fieldnames:
            raise RequestValidationError(
                "file", "columns", "file: CSV needs a header row with a 'category' column"
            )
        number = 0
        while True:
            number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field larger than the csv module's limit (131,072 characters)
                raise RequestValidationError(
                    f"file.row[{number}]", "csv", f"file row {number}: {exc}"
                ) from exc
            yield {key: value for key, value in row.items() if key in COLUMNS and value not in (None, "")}
    except UnicodeDecodeError as exc:
        raise RequestValidationError("file", "utf8", "file: CSV must be UTF-8") from exc
    finally:
        text.detach()


def _rows_jsonl(data: IO[bytes]) -> Iterator[Mapping[str, Any]]:
    for number, line in enumerate(data, start=1):
        if len(line) > MAX_JSONL_LINE_BYTES:
            raise RequestValidationError(
                f"file.line[{number}]",
                "max_line_bytes",
                f"file line {number}: longer than {MAX_JSONL_LINE_BYTES} bytes",
            )
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError as exc:
            raise RequestValidationError(
                f"file.line[{number}]", "json_depth", f"file line {number}: JSON nested too deeply"
            ) from exc
        except ValueError as exc:
            raise RequestValidationError(
                f"file.line[{number}]", "json", f"file line {number}: not JSON"
            ) from exc
        if not isinstance(row, dict):
            raise RequestValidationError(
                f"file.line[{number}]", "object", f"file line {number}: not a JSON object"
            )
        yield {key: value for key, value in row.items() if key in COLUMNS and value is not None}


def parse_item_manifest(
    data: bytes | IO[bytes],
    fmt: str,
    *,
    settings: ApiSettings | None = None,
    max_items: int | None = None,
    max_decoded_bytes: int | None = None,
) -> list[ItemCreate]:
    """The items of a manifest file; raise `RequestValidationError` naming the first bad row and column,
    or the bound (`max_items`, `max_decoded_bytes`, a Parquet footer's) it broke before decoding past it.

    The bounds come from `settings` (`max_items_per_job`, `manifest_max_decoded_bytes`,
    `manifest_parquet_*`; their defaults without it); `max_items` and `max_decoded_bytes` override them.
    """
    bounds = ParquetBounds()
    items_limit, decoded_limit = MAX_ITEMS_PER_JOB, DEFAULT_MAX_DECODED_BYTES
    if settings is not None:
        bounds = ParquetBounds(
            max_footer_bytes=settings.manifest_parquet_max_footer_bytes,
            max_columns=settings.manifest_parquet_max_columns,
            max_row_groups=settings.manifest_parquet_max_row_groups,
        )
        items_limit, decoded_limit = settings.max_items_per_job, settings.manifest_max_decoded_bytes
    max_items = items_limit if max_items is None else max_items
    max_decoded_bytes = decoded_limit if max_decoded_bytes is None else max_decoded_bytes
    rows: Iterator[Mapping[str, Any]]
    if fmt == "parquet":
        content = data if isinstance(data, bytes | bytearray) else data.read()
        rows = parquet_rows(
            content, COLUMNS, bounds=bounds, max_items=max_items, max_decoded_bytes=max_decoded_bytes
        )
    else:
        stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        rows = _rows_csv(stream) if fmt == "csv" else _rows_jsonl(stream)
    items: list[ItemCreate] = []
    for number, row in enumerate(rows, start=1):
        if len(items) >= max_items:
            raise RequestValidationError("file", "max_items", f"file: more than {max_items} rows")
        values = dict(row)
        values.setdefault("count", 1)
        for name in ("sku", "category", "client_item_id"):
            if name in values and not isinstance(values[name], str):
                values[name] = str(values[name])
        try:
            # Cells of a CSV are text: "4" is a count here, unlike in a JSON body.
            items.append(ItemCreate.model_validate(values, strict=False))
        except ValidationError as exc:
            error = exc.errors()[0]
            column = ".".join(str(part) for part in error["loc"]) or "row"
            raise RequestValidationError(
                f"file.row[{number}].{column}",
                str(error["type"]),
                f"file row {number}, {column}: {error['msg']}",
            ) from exc
    if not items:
        raise RequestValidationError("file", "min_items", "file: has no rows")
    return items


def _refused(uri: str, why: str) -> RequestValidationError:
    return RequestValidationError("manifest_uri", "tenant_prefix", f"manifest_uri {uri!r}: {why}")


def check_manifest_uri(
    uri: str, *, tenant_id: str, store_url: str, allowed_prefixes: Iterable[str] = ()
) -> tuple[str, str]:
    """The (bucket, key) of a `manifest_uri` the tenant may read, or a 422 (rule `tenant_prefix`).

    Allowed: under `<catalogan's store>/<tenant>/uploads/`, or under one of `allowed_prefixes`
    (`s3://bucket/prefix/`, set per tenant by the operator). Everything else is refused unread, so a tenant
    can neither read nor probe a bucket or prefix it does not own with the service's credentials.
    """
    from db.storage.s3 import parse_s3_url  # boto3 is imported only when a manifest_uri is used

    if not uri.startswith("s3://") or any(part in ("", ".", "..") for part in uri[5:].split("/")[1:]):
        raise _refused(uri, "must be s3://bucket/key with no empty, '.' or '..' segments")
    try:
        bucket, key = parse_s3_url(uri)
    except StorageError as exc:
        raise _refused(uri, str(exc)) from exc
    candidates = [f"{store_url.rstrip('/')}/{tenant_id}/{UPLOADS_FOLDER}/"]
    candidates += [prefix if prefix.endswith("/") else prefix + "/" for prefix in allowed_prefixes]
    if not any(uri.startswith(prefix) for prefix in candidates if prefix.startswith("s3://")):
        raise _refused(
            uri,
            f"put the manifest under your upload prefix {candidates[0]}"
            + (" or a prefix the operator allowed" if len(candidates) > 1 else ""),
        )
    return bucket, key


def read_manifest_uri(
    uri: str,
    *,
    tenant_id: str,
    store: ObjectStore,
    settings: ApiSettings | None = None,
    client: Any | None = None,
) -> tuple[bytes, str]:
    """Read an allowed `s3://bucket/key` manifest (see `check_manifest_uri`); return its bytes and format.

    The object's size comes from a HEAD and is refused over `settings.manifest_max_bytes` before the GET; the
    GET asks for no more than that (a Range), so an object swapped for a bigger one in between cannot be read
    whole either. The tenant's allowed prefixes come from `settings.manifest_uri_allowed_prefixes`.
    """
    from db.storage.s3 import S3Store, translate_error

    max_bytes = settings.manifest_max_bytes if settings else DEFAULT_MANIFEST_MAX_BYTES
    allowed = settings.manifest_uri_allowed_prefixes.get(tenant_id, []) if settings else []
    bucket, key = check_manifest_uri(uri, tenant_id=tenant_id, store_url=store.url, allowed_prefixes=allowed)
    fmt = manifest_format(key)
    s3 = S3Store(f"s3://{bucket}", client=client if client is not None else getattr(store, "client", None))
    try:
        size = s3.size(key)
        if size > max_bytes:
            raise RequestValidationError(
                "manifest_uri",
                "max_bytes",
                f"manifest_uri {uri!r}: {size} bytes, over the limit of {max_bytes}",
            )
        try:
            response = s3.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")
            with response["Body"] as body:
                data = bytes(body.read(max_bytes + 1))
        except Exception as exc:
            raise translate_error(exc, f"get {uri}") from exc
    except (TransientStorageError, RequestValidationError):
        raise  # the store is down (503), or the bound above (422)
    except (ObjectNotFoundError, StorageError) as exc:
        # A missing object or a refused read is the client's: the URI is theirs.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RequestValidationError("manifest_uri", "readable", f"manifest_uri {uri!r}: {message}") from exc
    if len(data) > max_bytes:
        raise RequestValidationError(
            "manifest_uri", "max_bytes", f"manifest_uri {uri!r}: over the limit of {max_bytes} bytes"
        )
    return data, fmt
