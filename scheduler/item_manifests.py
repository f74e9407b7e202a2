"""SKU manifests that clients upload (or point to with `s3://`): CSV, JSONL or Parquet → job items.

Columns: `category` (required), `count` (default 1), `sku`, `client_item_id`. Unknown columns are
ignored so that a catalog export can be sent as is. A row that breaks a rule is a 422 naming the row
and the column (`file.row[3].count`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from db.errors import TransientStorageError
from db.storage import open_store
from db.storage.base import ObjectStore
from scheduler.api.schemas import MAX_ITEMS_PER_JOB, ItemCreate
from scheduler.errors import RequestValidationError

FORMATS = ("csv", "jsonl", "parquet")
COLUMNS = ("category", "count", "sku", "client_item_id")


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


def _rows_csv(data: bytes) -> Iterable[Mapping[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestValidationError("file", "utf8", "file: CSV must be UTF-8") from exc
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "category" not in reader.fieldnames:
        raise RequestValidationError(
            "file", "columns", "file: CSV needs a header row with a 'category' column"
        )
    for row in reader:
        yield {key: value for key, value in row.items() if key in COLUMNS and value not in (None, "")}


def _rows_jsonl(data: bytes) -> Iterable[Mapping[str, Any]]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise RequestValidationError(
                f"file.line[{number}]", "json", f"file line {number}: not JSON"
            ) from exc
        if not isinstance(row, dict):
            raise RequestValidationError(
                f"file.line[{number}]", "object", f"file line {number}: not a JSON object"
            )
        yield {key: value for key, value in row.items() if key in COLUMNS and value is not None}


def _rows_parquet(data: bytes) -> Iterable[Mapping[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise RequestValidationError("file", "parquet", f"file: not a readable Parquet file ({exc})") from exc
    if "category" not in table.column_names:
        raise RequestValidationError("file", "columns", "file: Parquet needs a 'category' column")
    keep = [name for name in table.column_names if name in COLUMNS]
    for row in table.select(keep).to_pylist():
        yield {key: value for key, value in row.items() if value is not None}


def parse_item_manifest(data: bytes, fmt: str, *, max_items: int = MAX_ITEMS_PER_JOB) -> list[ItemCreate]:
    """The items of a manifest file; raise `RequestValidationError` naming the first bad row and column."""
    reader = {"csv": _rows_csv, "jsonl": _rows_jsonl, "parquet": _rows_parquet}[fmt]
    items: list[ItemCreate] = []
    for number, row in enumerate(reader(data), start=1):
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


def read_manifest_uri(uri: str, *, tenant_id: str, store: ObjectStore) -> tuple[bytes, str]:
    """Read an `s3://bucket/key` manifest; return its bytes and format.

    A URI inside catalogan's own store is allowed only under the calling tenant's prefix — otherwise
    a tenant could make the API read another tenant's objects.
    """
    bucket_and_key = uri[len("s3://") :]
    bucket, _, key = bucket_and_key.partition("/")
    own = store.url.rstrip("/") + "/"
    if uri.startswith(own):
        relative = uri[len(own) :]
        if not relative.startswith(f"{tenant_id}/"):
            raise RequestValidationError(
                "manifest_uri",
                "tenant_prefix",
                "manifest_uri: inside catalogan's store, use your tenant's prefix",
            )
    elif store.url.startswith(f"s3://{bucket}/") or store.url.rstrip("/") == f"s3://{bucket}":
        raise RequestValidationError(
            "manifest_uri",
            "tenant_prefix",
            "manifest_uri: inside catalogan's bucket, use your tenant's prefix",
        )
    fmt = manifest_format(key)
    try:
        data = open_store(f"s3://{bucket}").get(key)
    except TransientStorageError:
        raise  # the store is down, not the request wrong: 503
    except Exception as exc:
        # Bucket and key come from the client: a missing object, a bad bucket name or a refused read is theirs.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RequestValidationError("manifest_uri", "readable", f"manifest_uri {uri!r}: {message}") from exc
    return data, fmt
