"""Just enough of Thrift's compact protocol to read a Parquet footer's counts, offsets and sizes, and its page
headers, from untrusted bytes: no value is allocated from a declared count, every read is bounds-checked, and
a budget of entries bounds the time spent (`scheduler.api.parquet_manifests` uses it before pyarrow parses).

A struct is read into a dict of the fields asked for (`{field id: reader}`), the others skipped; as in Thrift's
generated code, a field of an unexpected type is skipped and a repeated one keeps its last value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from scheduler.errors import RequestValidationError

MAX_DEPTH = 16  # Parquet's own structs nest 5 deep
STOP, BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT, UUID = range(14)

FieldReader = Callable[["ThriftReader", int], Any]  # (reader, the field's type) -> value
Fields = Mapping[int, tuple[int, FieldReader]]  # the fields of a struct to read: id -> (type, reader)


def unreadable(why: object) -> RequestValidationError:
    """The 422 for bytes that are not the Parquet they claim to be."""
    return RequestValidationError("file", "parquet", f"file: not a readable Parquet file ({why})")


class ThriftReader:
    """Reads compact-protocol values from `data[position:end]`, spending one entry per field or list element
    from `budget` and calling `over_budget` (which raises) when it runs out."""

    def __init__(
        self, data: memoryview, position: int, end: int, budget: int, over_budget: Callable[[], Exception]
    ) -> None:
        self.data = data
        self.position = position
        self.end = end
        self.budget = budget
        self.over_budget = over_budget
        self.depth = 0

    def spend(self, entries: int) -> None:
        """Take `entries` from the budget."""
        self.budget -= entries
        if self.budget < 0:
            raise self.over_budget()

    def byte(self) -> int:
        """One byte."""
        if self.position >= self.end:
            raise unreadable("a Thrift structure runs past its bytes")
        value = self.data[self.position]
        self.position += 1
        return value

    def varint(self) -> int:
        """An unsigned LEB128 varint of at most 64 bits."""
        result = shift = 0
        while shift < 64:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
        raise unreadable("an over-long Thrift integer")

    def integer(self, kind: int = I64) -> int:
        """A zigzag-encoded i16, i32 or i64."""
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def binary(self, kind: int = BINARY) -> bytes:
        """A length-prefixed byte string."""
        size = self.varint()
        if self.position + size > self.end:
            raise unreadable("a Thrift string runs past its bytes")
        self.position += size
        return bytes(self.data[self.position - size : self.position])

    def list_header(self) -> tuple[int, int]:
        """(element type, declared size) of a list or set, the size taken from the budget."""
        header = self.byte()
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size = self.varint()
        self.spend(size)
        return element, size

    def items(self, read: FieldReader) -> list[Any]:
        """A list whose elements are read with `read`, whatever element type its header names (as Thrift's
        generated code does)."""
        element, size = self.list_header()
        return [read(self, element) for _ in range(size)]

    def skip(self, kind: int) -> None:
        """Skip one value of `kind`."""
        if kind in (STOP, BOOL_TRUE, BOOL_FALSE):
            return  # nothing to skip (Thrift's own skip does the same); a boolean field's value is its type
        if kind == BYTE:
            self.byte()
        elif kind in (I16, I32, I64):
            self.varint()
        elif kind == DOUBLE:
            if self.position + 8 > self.end:
                raise unreadable("a Thrift double runs past its bytes")
            self.position += 8
        elif kind == BINARY:
            self.binary()
        elif kind in (LIST, SET):
            element, size = self.list_header()
            for _ in range(size):
                if element in (BOOL_TRUE, BOOL_FALSE):
                    self.byte()  # booleans in a list take a byte each
                else:
                    self.skip(element)
        elif kind == MAP:
            size = self.varint()
            if size:
                types = self.byte()
                self.spend(2 * size)
                for _ in range(size):
                    self.skip(types >> 4)
                    self.skip(types & 0x0F)
        elif kind == STRUCT:
            self.struct({})
        elif kind == UUID:
            if self.position + 16 > self.end:
                raise unreadable("a Thrift UUID runs past its bytes")
            self.position += 16
        else:
            raise unreadable(f"unknown Thrift type {kind}")

    def struct(self, fields: Fields) -> dict[int, Any]:
        """A struct: `fields` maps a field id to (its type, its reader); other fields are skipped."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise unreadable("Thrift structures nested too deeply")
        values: dict[int, Any] = {}
        number = 0
        while True:
            header = self.byte()
            delta, kind = header >> 4, header & 0x0F
            if kind == STOP:  # whatever the high bits hold, as Thrift's compact reader does
                self.depth -= 1
                return values
            self.spend(1)
            number = number + delta if delta else self.integer(I16)
            wanted = fields.get(number)
            if wanted is not None and wanted[0] == kind:
                values[number] = wanted[1](self, kind)
            else:
                self.skip(kind)
