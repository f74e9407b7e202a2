"""Parquet item manifests, bounded from what the file declares before pyarrow allocates for it.

A Parquet file describes itself, and pyarrow trusts the description: the footer (Thrift, at the end of the
file) is parsed with every list reserved at its declared length (a 57-byte file declaring a million column
chunks cost 730 MiB), a footer of many tiny structs inflates about 240 times in memory, a page is decompressed
into a buffer of the size its header declares (a 33 KB file holding one zstd page of 1 GiB cost 3 GiB), and the
footer's sums (`total_uncompressed_size`) are never compared with the pages. pyarrow's `RowGroupMetaData.column`
even aborts the process on some malformed column metadata (a C++ exception its binding does not catch: a
439-byte upload killed the API), so the row groups' metadata is read here, never through pyarrow's accessors.

Each bound is checked from the cheapest declaration that covers it, before the work it bounds:

1. the footer's length (the 4 bytes before the closing `PAR1`): at most `max_footer_bytes`;
2. the footer, read here (`scheduler.api.parquet_thrift`, a budget of `MAX_FOOTER_ENTRIES` fields and list
   entries): leaf columns, row groups, column chunks (`MAX_COLUMN_CHUNKS`), rows (the items limit), and each
   kept column chunk's byte range;
3. the footer parsed by pyarrow, its Thrift lists capped (`footer_list_limit`), for the column types;
4. every page header of the kept columns, read here without decompressing anything: at most
   `MAX_PARQUET_PAGES` pages whose declared sizes add up to at most `max_decoded_bytes`. pyarrow decompresses
   a page into exactly its declared size and fails when the data does not fit (zstd, gzip, snappy, lz4 and
   brotli alike), so this sum bounds what decompression allocates;
5. the rows, in record batches whose decoded text is counted before it becomes Python objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.api.parquet_thrift import BINARY, I32, I64, LIST, STRUCT, Fields, ThriftReader, unreadable
from scheduler.errors import RequestValidationError
from scheduler.settings import (
    DEFAULT_MANIFEST_PARQUET_MAX_COLUMNS,
    DEFAULT_MANIFEST_PARQUET_MAX_FOOTER_BYTES,
    DEFAULT_MANIFEST_PARQUET_MAX_ROW_GROUPS,
)

PARQUET_MAGIC = b"PAR1"
# Thrift fields and list entries read from the footer: a 790 KiB footer of 50 columns in 100 row groups holds
# 186,000 (read in 0.15 s); the bound keeps a hostile footer to a few tenths of a second of Python.
MAX_FOOTER_ENTRIES = 400_000
# Column chunks (row groups x columns) in the whole file, checked before pyarrow parses the footer, which
# holds each in about 700 bytes: 1,000 columns in 20 row groups, or 50 in 400.
MAX_COLUMN_CHUNKS = 20_000
# Pages of the kept columns (at most 4) in the whole file: pyarrow writes 20,000 rows per page at most, so a
# 100,000-row manifest has a handful per column and row group.
MAX_PARQUET_PAGES = 10_000
# Thrift fields and list entries read from those pages' headers (about 10 each): bounds the time spent here.
MAX_PAGE_HEADER_ENTRIES = 20 * MAX_PARQUET_PAGES
BATCH_ROWS = 1024
# A Parquet cell longer than any field accepts (client_item_id: 255 characters, 4 bytes each at most) is
# refused before it becomes a Python string: one batch then decodes to at most 1024 rows x 4 columns x 1 KiB.
MAX_CELL_BYTES = 1024
# pyarrow reads past the declared range of column chunks written by parquet-mr before 1.2.9 (PARQUET-816).
_OLD_PARQUET_MR = re.compile(rb"parquet-mr version 1\.([01]\.|2\.[0-8]\b)")


@dataclass(frozen=True, slots=True)
class ParquetBounds:
    """What a Parquet manifest may declare in its footer (`ApiSettings.manifest_parquet_*`)."""

    max_footer_bytes: int = DEFAULT_MANIFEST_PARQUET_MAX_FOOTER_BYTES
    max_columns: int = DEFAULT_MANIFEST_PARQUET_MAX_COLUMNS
    max_row_groups: int = DEFAULT_MANIFEST_PARQUET_MAX_ROW_GROUPS

    @property
    def footer_list_limit(self) -> int:
        """The longest list the footer may declare: the schema (a nested column adds group entries), the row
        groups, the column chunks of one row group, the column orders."""
        return 4 * max(self.max_columns, self.max_row_groups) + 16


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A column chunk of a kept column: the bytes pyarrow reads its pages from, and its declared size."""

    column: str
    start: int
    end: int
    declared_uncompressed: int


@dataclass(frozen=True, slots=True)
class _Footer:
    """What the footer declares, as far as the bounds need it."""

    columns: int  # leaf columns
    rows: int  # the larger of the file's count and the row groups' sum
    groups: list[list[dict[int, Any]]]  # per row group, per leaf column: the ColumnChunk's fields
    created_by: bytes

    def chunks(self, indexes: Sequence[int], names: Sequence[str]) -> list[_Chunk]:
        """The chunks of the leaf columns `indexes` (named `names`) in every row group."""
        found = []
        for group in self.groups:
            for index, name in zip(indexes, names, strict=True):
                chunk = group[index]
                if 8 in chunk or 9 in chunk or 3 not in chunk:
                    raise unreadable(f"column '{name}' is encrypted or has no metadata")
                metadata = chunk[3]
                if any(field not in metadata for field in (6, 7, 9)):
                    raise unreadable(f"column '{name}' has no sizes or offsets")
                # The range pyarrow reads the pages from: a dictionary page, when there is one, comes first.
                first = metadata[9]
                dictionary = metadata.get(11)
                if dictionary is not None and 0 < dictionary < first:
                    first = dictionary
                found.append(_Chunk(name, first, first + metadata[7], metadata[6]))
        return found


def _too_many_rows(rows: int, max_items: int) -> RequestValidationError:
    return RequestValidationError("file", "max_items", f"file: {rows} rows, more than {max_items}")


def _too_large_decoded(max_decoded_bytes: int) -> RequestValidationError:
    return RequestValidationError(
        "file", "max_decoded_bytes", f"file: decodes to more than {max_decoded_bytes} bytes of cell text"
    )


def _footer_start(data: memoryview, bounds: ParquetBounds) -> int:
    """Where the footer starts, once the file's frame and the footer's declared length have been checked."""
    if len(data) < 12 or data[:4] != PARQUET_MAGIC or data[-4:] != PARQUET_MAGIC:
        raise unreadable("it must start and end with PAR1; encrypted footers are not accepted")
    length = int.from_bytes(data[-8:-4], "little")
    if length > bounds.max_footer_bytes:
        raise RequestValidationError(
            "file",
            "max_footer_bytes",
            f"file: the Parquet footer is {length} bytes, more than {bounds.max_footer_bytes} "
            "(write fewer row groups or drop unused columns)",
        )
    if length > len(data) - 12:
        raise unreadable(f"its footer length {length} is larger than the file")
    return len(data) - 8 - length


def _count_leaves(elements: list[dict[int, Any]]) -> int:
    """The leaf columns of a flattened schema, counted as parquet-cpp unflattens it (the first element is the
    root; a leaf has a type and no children; a group reads as many elements as it declares children)."""
    leaves = 0
    position = 1
    pending = [max(0, elements[0].get(5, 0)) if elements else 0]
    while pending:
        left = pending.pop()
        if left == 0:
            continue
        pending.append(left - 1)
        if position >= len(elements):
            raise unreadable("its schema has fewer elements than its groups declare")
        element = elements[position]
        position += 1
        children = element.get(5, 0)
        if children == 0 and 1 in element:
            leaves += 1
        else:
            pending.append(max(0, children))
    if position != len(elements):
        raise unreadable("its schema has elements outside the root")
    return leaves


def _read_footer(data: memoryview, start: int, end: int, bounds: ParquetBounds) -> _Footer:
    """The footer's counts and column chunks, read with every list bounded at its header."""

    def refuse_entries() -> RequestValidationError:
        return RequestValidationError(
            "file",
            "max_footer_entries",
            f"file: the Parquet footer holds more than {MAX_FOOTER_ENTRIES} entries",
        )

    def bounded_list(reader: ThriftReader, limit: int, rule: str, what: str, read: Any) -> list[Any]:
        _, size = reader.list_header()
        if size > limit:
            raise RequestValidationError(
                "file", rule, f"file: the footer declares {size} {what}, over {limit}"
            )
        return [read(reader) for _ in range(size)]

    schema_element: Fields = {
        1: (I32, ThriftReader.integer),
        4: (BINARY, ThriftReader.binary),
        5: (I32, ThriftReader.integer),
    }
    column_metadata: Fields = {k: (I64, ThriftReader.integer) for k in (6, 7, 9, 11)}
    column_chunk: Fields = {
        3: (STRUCT, lambda r, _: r.struct(column_metadata)),
        8: (STRUCT, lambda r, _: r.struct({})),  # crypto_metadata
        9: (BINARY, ThriftReader.binary),  # encrypted_column_metadata
    }
    row_group: Fields = {
        1: (
            LIST,
            lambda r, _: bounded_list(
                r,
                bounds.max_columns,
                "max_columns",
                "column chunks in a row group",
                lambda r: r.struct(column_chunk),
            ),
        ),
        3: (I64, ThriftReader.integer),
    }
    file_metadata: Fields = {
        2: (
            LIST,
            lambda r, _: bounded_list(
                r,
                bounds.footer_list_limit,
                "max_columns",
                "schema elements",
                lambda r: r.struct(schema_element),
            ),
        ),
        3: (I64, ThriftReader.integer),
        4: (
            LIST,
            lambda r, _: bounded_list(
                r, bounds.max_row_groups, "max_row_groups", "row groups", lambda r: r.struct(row_group)
            ),
        ),
        6: (BINARY, ThriftReader.binary),
        8: (STRUCT, lambda r, _: r.struct({})),  # encryption_algorithm: a plaintext footer, encrypted columns
    }
    footer = ThriftReader(data, start, end, MAX_FOOTER_ENTRIES, refuse_entries).struct(file_metadata)
    if 8 in footer:
        raise unreadable("encrypted columns are not accepted")
    leaves = _count_leaves(footer.get(2, []))
    if leaves > bounds.max_columns:
        raise RequestValidationError(
            "file", "max_columns", f"file: {leaves} columns, more than {bounds.max_columns}"
        )
    row_groups = footer.get(4, [])
    if any(len(group.get(1, [])) != leaves or group.get(3, -1) < 0 for group in row_groups):
        raise unreadable("a row group does not match the schema")
    if len(row_groups) * leaves > MAX_COLUMN_CHUNKS:
        raise RequestValidationError(
            "file",
            "max_column_chunks",
            f"file: {len(row_groups)} row groups of {leaves} columns, more than {MAX_COLUMN_CHUNKS} column chunks",
        )
    rows = max(footer.get(3, 0), sum(group[3] for group in row_groups))
    return _Footer(leaves, rows, [group.get(1, []) for group in row_groups], footer.get(6, b""))


def _check_pages(
    data: memoryview, footer_start: int, chunks: Sequence[_Chunk], max_decoded_bytes: int
) -> None:
    """Read the header of every page of the kept columns and refuse the file over the page or byte bound."""

    def refuse_entries() -> RequestValidationError:
        return RequestValidationError(
            "file",
            "max_pages",
            f"file: the item columns' page headers hold more than {MAX_PAGE_HEADER_ENTRIES} entries",
        )

    page_header: Fields = {2: (I32, ThriftReader.integer), 3: (I32, ThriftReader.integer)}
    reader = ThriftReader(data, 0, footer_start, MAX_PAGE_HEADER_ENTRIES, refuse_entries)
    pages = declared = 0
    for chunk in chunks:
        if chunk.start < len(PARQUET_MAGIC) or chunk.end < chunk.start or chunk.end > footer_start:
            raise unreadable(f"column '{chunk.column}' lies outside the file's data")
        reader.position = chunk.start
        while reader.position < chunk.end:
            pages += 1
            if pages > MAX_PARQUET_PAGES:
                raise RequestValidationError(
                    "file", "max_pages", f"file: the item columns have more than {MAX_PARQUET_PAGES} pages"
                )
            sizes = reader.struct(page_header)
            if 2 not in sizes or 3 not in sizes or min(sizes[2], sizes[3]) < 0:
                raise unreadable(f"a page of column '{chunk.column}' has no valid sizes")
            # An uncompressed page is read as stored, whatever its header says.
            declared += max(sizes[2], sizes[3])
            if declared > max_decoded_bytes:
                raise _too_large_decoded(max_decoded_bytes)
            reader.position += sizes[3]


def _check_footer(footer: _Footer, max_items: int) -> None:
    """Refuse the rows the footer declares over the items limit, and files pyarrow reads past their ranges."""
    if footer.rows > max_items:
        raise _too_many_rows(footer.rows, max_items)
    if _OLD_PARQUET_MR.match(footer.created_by):
        raise unreadable("written by parquet-mr before 1.2.9; write it again with a current writer")


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


def _open(
    data: memoryview, columns: Sequence[str], bounds: ParquetBounds, footer: _Footer
) -> tuple[Any, list[str], list[str], list[_Chunk]]:
    """The `ParquetFile` (text columns dictionary-encoded), the kept columns, the text ones among them, and
    the column chunks pyarrow reads for them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    limits = {
        "thrift_string_size_limit": bounds.max_footer_bytes,
        "thrift_container_size_limit": bounds.footer_list_limit,
    }
    try:
        source = pa.BufferReader(pa.py_buffer(data))
        first = pq.ParquetFile(source, **limits)
        schema = first.schema_arrow
        # The leaves `iter_batches(columns=...)` reads for a name: those whose path starts with it.
        paths = first.reader.column_paths
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise unreadable(exc) from exc
    if len(paths) != footer.columns:
        raise unreadable("its schema reads differently in two readers")
    names = schema.names
    keep = [name for name in names if name in columns]
    if len(keep) != len(set(keep)):
        raise RequestValidationError("file", "columns", "file: a column name appears twice")
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
                f"file.{name}", "column_type", f"file: column '{name}' has type {kind}; use text or integers"
            )
    if "category" not in names:
        raise RequestValidationError("file", "columns", "file: Parquet needs a 'category' column")
    try:
        # String columns stay dictionary-encoded in memory until each batch's size has been counted; the
        # footer parsed above is reused, not parsed again.
        parquet = pq.ParquetFile(source, metadata=first.metadata, read_dictionary=texts, **limits)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise unreadable(exc) from exc
    indexes = [index for index, path in enumerate(paths) if path and path[0] in keep]
    return parquet, keep, texts, footer.chunks(indexes, [paths[index][0] for index in indexes])


def parquet_rows(
    data: bytes | bytearray | memoryview,
    columns: Sequence[str],
    *,
    bounds: ParquetBounds,
    max_items: int,
    max_decoded_bytes: int,
) -> Iterator[Mapping[str, Any]]:
    """The rows of a Parquet manifest (only `columns`, nulls left out), every bound checked before the work it
    bounds (see the module's docstring); a broken one is a `RequestValidationError` on `file`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    view = memoryview(data).cast("B")
    footer_start = _footer_start(view, bounds)
    footer = _read_footer(view, footer_start, len(view) - 8, bounds)
    _check_footer(footer, max_items)
    parquet, keep, texts, chunks = _open(view, columns, bounds, footer)
    if sum(chunk.declared_uncompressed for chunk in chunks) > max_decoded_bytes:
        raise _too_large_decoded(max_decoded_bytes)
    _check_pages(view, footer_start, chunks, max_decoded_bytes)
    decoded = rows = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=keep):
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
                    first = rows - batch.num_rows + 1
                    raise RequestValidationError(
                        f"file.row[{first}].{name}",
                        "max_cell_bytes",
                        f"file: a '{name}' cell near row {first} is longer than {MAX_CELL_BYTES} bytes",
                    )
                decoded += pc.sum(lengths).as_py() or 0
            if decoded > max_decoded_bytes:
                raise _too_large_decoded(max_decoded_bytes)
            try:
                values = batch.to_pylist()
            except UnicodeDecodeError as exc:  # a string column's bytes are the writer's word, not checked
                first = rows - batch.num_rows + 1
                raise RequestValidationError(
                    "file", "utf8", f"file: text near row {first} is not UTF-8"
                ) from exc
            for row in values:
                yield {key: value for key, value in row.items() if value is not None}
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(exc) from exc
