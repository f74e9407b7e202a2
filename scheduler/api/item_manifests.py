"""SKU manifests that clients upload (or point to with `s3://`): CSV, JSONL or Parquet → job items.

Columns: `category` (required), `count` (default 1), `sku`, `client_item_id`. Unknown columns are
ignored so that a catalog export can be sent as is. A row that breaks a rule is a 422 naming the row
and the column (`file.row[3].count`).

Bounds, each checked before the work it bounds (a hostile file must not cost the API memory or CPU):

- rows: at most `max_items`. Parquet's row count is read from its footer and refused before any page is
  decoded; CSV and JSONL are parsed row by row and stop at the first row over the limit.
- decoded bytes: at most `max_decoded_bytes` of cell text. Parquet: the kept columns' uncompressed size from
  the footer is checked first, then string columns are read dictionary-encoded in record batches and each
  batch's decoded length is counted before it becomes Python objects (a few KB of dictionary-encoded file can
  decode to gigabytes); a cell over `MAX_CELL_BYTES` is refused the same way. CSV and JSONL text is decoded incrementally and is never larger than the file.
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
from scheduler.api.schemas import ItemCreate
from scheduler.errors import RequestValidationError
from scheduler.settings import ApiSettings

FORMATS = ("csv", "jsonl", "parquet")
COLUMNS = ("category", "count", "sku", "client_item_id")
MIB = 1024 * 1024
# Cell text a manifest may decode to (Parquet string columns, CSV/JSONL text): far above 100,000 short rows.
DEFAULT_MAX_DECODED_BYTES = 64 * MIB
# The largest object a `manifest_uri` may name (checked with a HEAD before the GET).
DEFAULT_MANIFEST_MAX_BYTES = 64 * MIB
MAX_JSONL_LINE_BYTES = 64 * 1024
PARQUET_BATCH_ROWS = 1024
# A Parquet cell longer than any field accepts (client_item_id: 255 characters, 4 bytes each at most) is
# refused before it becomes a Python string: one batch then decodes to at most 1024 rows x 4 columns x 1 KiB.
MAX_CELL_BYTES = 1024
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


def _too_many_rows(rows: int, max_items: int) -> RequestValidationError:
    return RequestValidationError("file", "max_items", f"file: {rows} rows, more than {max_items}")


def _too_large_decoded(max_decoded_bytes: int) -> RequestValidationError:
    return RequestValidationError(
        "file", "max_decoded_bytes", f"file: decodes to more than {max_decoded_bytes} bytes of cell text"
    )


def _is_text(pa: Any, kind: Any) -> bool:
    types = pa.types
    return bool(
        types.is_string(kind)
        or types.is_large_string(kind)
        or types.is_binary(kind)
        or types.is_large_binary(kind)
        or getattr(types, "is_string_view", lambda _: False)(kind)
        or getattr(types, "is_binary_view", lambda _: False)(kind)
    )


def _rows_parquet(data: IO[bytes], max_decoded_bytes: int, max_items: int) -> Iterator[Mapping[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(data)
        names = schema.names
        keep = [name for name in names if name in COLUMNS]
        texts = []
        for name in keep:
            kind = schema.field(name).type
            kind = kind.value_type if pa.types.is_dictionary(kind) else kind
            if _is_text(pa, kind):
                texts.append(name)
            elif not (
                pa.types.is_integer(kind)
                or pa.types.is_floating(kind)
                or pa.types.is_boolean(kind)
                or pa.types.is_null(kind)
            ):
                # Nested or exotic types (lists, structs, ...) could decode to anything: not a manifest.
                raise RequestValidationError(
                    f"file.{name}",
                    "column_type",
                    f"file: column '{name}' has type {kind}; use text or integers",
                )
        data.seek(0)
        # String columns stay dictionary-encoded in memory until each batch's size has been counted.
        parquet = pq.ParquetFile(data, read_dictionary=texts)
    except (pa.ArrowException, OSError) as exc:
        raise RequestValidationError("file", "parquet", f"file: not a readable Parquet file ({exc})") from exc
    if "category" not in names:
        raise RequestValidationError("file", "columns", "file: Parquet needs a 'category' column")
    metadata = parquet.metadata
    if metadata.num_rows > max_items:
        raise _too_many_rows(metadata.num_rows, max_items)
    indexes = [i for i in range(metadata.num_columns) if metadata.schema.column(i).path in keep]
    uncompressed = sum(
        metadata.row_group(group).column(i).total_uncompressed_size
        for group in range(metadata.num_row_groups)
        for i in indexes
    )
    if uncompressed > max_decoded_bytes:
        raise _too_large_decoded(max_decoded_bytes)
    decoded = rows = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=keep):
            rows += batch.num_rows
            if rows > max_items:
                raise _too_many_rows(rows, max_items)
            for name in texts:
                column = batch.column(name)
                if pa.types.is_dictionary(column.type):
                    lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
                else:
                    lengths = pc.binary_length(column)
                longest = pc.max(lengths).as_py() or 0
                if longest > MAX_CELL_BYTES:
                    raise RequestValidationError(
                        f"file.row[{rows - batch.num_rows + 1}].{name}",
                        "max_cell_bytes",
                        f"file: a '{name}' cell near row {rows - batch.num_rows + 1} is longer than "
                        f"{MAX_CELL_BYTES} bytes",
                    )
                decoded += pc.sum(lengths).as_py() or 0
            if decoded > max_decoded_bytes:
                raise _too_large_decoded(max_decoded_bytes)
            for row in batch.to_pylist():
                yield {key: value for key, value in row.items() if value is not None}
    except pa.ArrowException as exc:
        raise RequestValidationError("file", "parquet", f"file: not a readable Parquet file ({exc})") from exc


def _rows(data: IO[bytes], fmt: str, max_items: int, max_decoded_bytes: int) -> Iterator[Mapping[str, Any]]:
    if fmt == "csv":
        return _rows_csv(data)
    if fmt == "jsonl":
        return _rows_jsonl(data)
    return _rows_parquet(data, max_decoded_bytes, max_items)


def parse_item_manifest(
    data: bytes | IO[bytes],
    fmt: str,
    *,
    max_items: int = MAX_ITEMS_PER_JOB,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> list[ItemCreate]:
    """The items of a manifest file; raise `RequestValidationError` naming the first bad row and column,
    or the bound (`max_items`, `max_decoded_bytes`) it broke before decoding past it."""
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    items: list[ItemCreate] = []
    for number, row in enumerate(_rows(stream, fmt, max_items, max_decoded_bytes), start=1):
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
