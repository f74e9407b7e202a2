"""Forged Parquet files for the hostile-manifest tests: a Thrift compact protocol codec (independent of the one
in `scheduler.api.parquet_manifests`), footers edited field by field, and hand-made pages.

A Thrift struct is held as a list of `[field id, compact type, value]`; a list as `(element type, [values])`.
Parquet's own field ids: FileMetaData 2 schema, 3 num_rows, 4 row_groups; RowGroup 1 columns, 2
total_byte_size, 3 num_rows; ColumnChunk 2 file_offset, 3 meta_data; ColumnMetaData 6 total_uncompressed_size,
7 total_compressed_size, 9 data_page_offset; PageHeader 1 type, 2 uncompressed_page_size, 3
compressed_page_size, 5 data_page_header (DataPageHeader 1 num_values, 2-4 encodings).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

STRUCT, LIST, BINARY, I32, I64 = 12, 9, 8, 5, 6
MIB = 1024 * 1024


def varint(value: int) -> bytes:
    """An unsigned LEB128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def zigzag(value: int) -> bytes:
    """A signed integer as Thrift compact writes it."""
    return varint((value << 1) ^ (value >> 63))


class Reader:
    """Thrift compact protocol to nested lists (what `write_struct` writes back byte for byte)."""

    def __init__(self, data: bytes, position: int = 0) -> None:
        self.data, self.position = data, position

    def byte(self) -> int:
        value = self.data[self.position]
        self.position += 1
        return value

    def uvarint(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def value(self, kind: int) -> Any:
        if kind in (1, 2):
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            raw = self.uvarint()
            return (raw >> 1) ^ -(raw & 1)
        if kind == 7:
            self.position += 8
            return self.data[self.position - 8 : self.position]
        if kind == BINARY:
            size = self.uvarint()
            self.position += size
            return self.data[self.position - size : self.position]
        if kind in (LIST, 10):
            header = self.byte()
            size, element = header >> 4, header & 0x0F
            size = self.uvarint() if size == 15 else size
            return element, [
                self.byte() == 1 if element in (1, 2) else self.value(element) for _ in range(size)
            ]
        if kind == STRUCT:
            return self.struct()
        raise ValueError(f"Thrift type {kind}")

    def struct(self) -> list[list[Any]]:
        fields: list[list[Any]] = []
        last = 0
        while True:
            header = self.byte()
            if header == 0:
                return fields
            delta, kind = header >> 4, header & 0x0F
            number = last + delta if delta else self.value(4)
            fields.append([number, kind, self.value(kind)])
            last = number


def write_value(kind: int, value: Any) -> bytes:
    """One Thrift compact value of `kind`."""
    if kind == 3:
        return bytes([value])
    if kind in (4, 5, 6):
        return zigzag(value)
    if kind == 7:
        return bytes(value)
    if kind == BINARY:
        return varint(len(value)) + bytes(value)
    if kind in (LIST, 10):
        element, items = value
        size = len(items)
        header = bytes([(size << 4) | element]) if size < 15 else bytes([0xF0 | element]) + varint(size)
        if element in (1, 2):
            return header + bytes(1 if item else 2 for item in items)
        return header + b"".join(write_value(element, item) for item in items)
    if kind == STRUCT:
        return write_struct(value)
    raise ValueError(f"Thrift type {kind}")


def write_struct(fields: list[list[Any]]) -> bytes:
    """A Thrift compact struct (fields in the given order)."""
    out = bytearray()
    last = 0
    for number, kind, value in fields:
        if kind in (1, 2):
            kind = 1 if value else 2
        delta = number - last
        out += bytes([(delta << 4) | kind]) if 0 < delta <= 15 else bytes([kind]) + zigzag(number)
        if kind not in (1, 2):
            out += write_value(kind, value)
        last = number
    return bytes(out + b"\x00")


def field(fields: list[list[Any]], number: int) -> list[Any]:
    """The `[id, type, value]` entry of field `number` (to edit it in place)."""
    return next(entry for entry in fields if entry[0] == number)


def read_footer(data: bytes) -> tuple[int, list[list[Any]]]:
    """(where the footer starts, the FileMetaData struct)."""
    length = struct.unpack("<i", data[-8:-4])[0]
    start = len(data) - 8 - length
    return start, Reader(data, start).struct()


def frame(body: bytes, footer: bytes) -> bytes:
    """A Parquet file: magic, the column data, the footer, its length, magic."""
    return b"PAR1" + body + footer + struct.pack("<i", len(footer)) + b"PAR1"


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    """`table` written by pyarrow."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def one_column_footer(row_groups: bytes, count: int, num_rows: int = 0) -> bytes:
    """A FileMetaData with a `category` string column and `count` row groups already encoded in `row_groups`."""
    schema = [
        [[4, BINARY, b"schema"], [5, I32, 1]],
        [[1, I32, 6], [3, I32, 1], [4, BINARY, b"category"], [6, I32, 0]],  # BYTE_ARRAY, OPTIONAL, UTF8
    ]
    head = write_struct([[1, I32, 2], [2, LIST, (STRUCT, schema)], [3, I64, num_rows]])[:-1]
    return head + bytes([0x19, 0xF0 | STRUCT]) + varint(count) + row_groups + b"\x00"


def row_group_of_empty_chunks(chunks: int, *, declared: int | None = None) -> bytes:
    """A RowGroup whose column list declares `declared` (default `chunks`) ColumnChunks and holds `chunks` of
    three bytes each (`file_offset = 0` and nothing else), with 0 rows."""
    columns = bytes([0xF0 | STRUCT]) + varint(chunks if declared is None else declared)
    columns += write_struct([[2, I64, 0]]) * chunks
    return bytes([0x19]) + columns + bytes([0x16]) + zigzag(0) + bytes([0x16]) + zigzag(0) + b"\x00"


def a_footer_declaring(chunks: int) -> bytes:
    """A file of a few dozen bytes whose only row group declares `chunks` column chunks and holds one."""
    group = bytes([0x19, 0xF0 | STRUCT]) + varint(chunks) + write_struct([[2, I64, 0]])
    return frame(b"", one_column_footer(group, 1))


def a_footer_of_tiny_chunks(total_bytes: int, chunks_per_group: int = 4_000) -> bytes:
    """A file whose footer is about `total_bytes` of row groups of 3-byte column chunks (each list short)."""
    group = row_group_of_empty_chunks(chunks_per_group)
    count = max(1, total_bytes // len(group))
    return frame(b"", one_column_footer(group * count, count))


def a_gzip_page_bomb(uncompressed_bytes: int, *, page_declares: int | None = None) -> bytes:
    """One row whose `category` is `uncompressed_bytes` of `a` in a single gzip page (about 1/1000 of that on
    disk), with the footer declaring 100 uncompressed bytes; `page_declares` makes the page header lie too."""
    table = pa.table({"category": pa.array(["a"], pa.string())})
    table = table.cast(pa.schema([pa.field("category", pa.string(), nullable=False)]))
    template = parquet_bytes(table, compression="gzip", use_dictionary=False, write_statistics=False)
    _, metadata = read_footer(template)
    # The page: a PLAIN byte array (4-byte length, then the bytes) of a REQUIRED column, gzip-compressed.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(struct.pack("<i", uncompressed_bytes - 4))]
    piece = b"a" * MIB
    left = uncompressed_bytes - 4
    while left > 0:
        parts.append(compressor.compress(piece[: min(left, MIB)]))
        left -= MIB
    parts.append(compressor.flush())
    compressed = b"".join(parts)
    data_page = [[1, I32, 1], [2, I32, 0], [3, I32, 3], [4, I32, 3]]  # 1 value, PLAIN, RLE levels
    header = write_struct(
        [
            [1, I32, 0],  # DATA_PAGE
            [2, I32, uncompressed_bytes if page_declares is None else page_declares],
            [3, I32, len(compressed)],
            [5, STRUCT, data_page],
        ]
    )
    page = header + compressed
    (row_group,) = field(metadata, 4)[2][1]
    field(row_group, 2)[2] = 100  # total_byte_size
    field(row_group, 6)[2] = len(page)  # total_compressed_size
    (chunk,) = field(row_group, 1)[2][1]
    chunk_metadata = field(chunk, 3)[2]
    field(chunk_metadata, 6)[2] = 100  # total_uncompressed_size: the lie
    field(chunk_metadata, 7)[2] = len(page)
    field(chunk_metadata, 9)[2] = 4  # the page right after the leading magic
    field(chunk, 2)[2] = 4
    for number in (10, 11):  # no index or dictionary page
        chunk_metadata[:] = [entry for entry in chunk_metadata if entry[0] != number]
    return frame(page, write_struct(metadata))


def a_footer_with_a_bad_level_histogram() -> bytes:
    """An ordinary two-row file whose `category` chunk's size statistics list three definition levels for a
    column that has two (pyarrow's `RowGroupMetaData.column` throws a C++ exception its binding cannot catch)."""
    data = parquet_bytes(pa.table({"category": ["a", "b"]}))
    start, metadata = read_footer(data)
    (row_group,) = field(metadata, 4)[2][1]
    (chunk,) = field(row_group, 1)[2][1]
    size_statistics = field(field(chunk, 3)[2], 16)[2]
    histogram = field(size_statistics, 3)[2][1]  # definition_level_histogram: one count per level
    assert len(histogram) == 2, histogram
    histogram.append(0)
    return frame(data[4:start], write_struct(metadata))


def a_footer_of_empty_chunks(columns: int, row_groups: int) -> bytes:
    """A file of `columns` string columns (`category`, `c1`, ...) whose footer lists `row_groups` row groups of
    that many 3-byte column chunks, and no data."""
    names = [b"category"] + [f"c{i}".encode() for i in range(1, columns)]
    schema = [[[4, BINARY, b"schema"], [5, I32, columns]]]
    schema += [[[1, I32, 6], [3, I32, 1], [4, BINARY, name]] for name in names]
    head = write_struct([[1, I32, 2], [2, LIST, (STRUCT, schema)], [3, I64, 0]])[:-1]
    groups = row_group_of_empty_chunks(columns) * row_groups
    return frame(b"", head + bytes([0x19, 0xF0 | STRUCT]) + varint(row_groups) + groups + b"\x00")
