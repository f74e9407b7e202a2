"""How a job's images are cut into chunks: consecutive small items share a chunk, large items are cut alone.

A job's generated items take the contiguous indices `[0, images_total)` in item order (db.planning). A chunk
is a contiguous index range of at most `chunk_size` images; it may cover several consecutive items, and every
image keeps its own item's category, SKU and class index (the worker reads them per index,
`db.chunks.chunk_items`). The rule, walking the items in order with one open chunk:

- an item that fits in the open chunk's free room joins it (a one-image SKU line never gets a chunk alone);
- otherwise the open chunk is closed and the item is cut from its own first index into pieces of
  `chunk_size`; its last piece, when shorter, becomes the open chunk.

So an item of at most `chunk_size` images is never split, a large item is cut exactly as when every chunk
belonged to one item, and any two consecutive chunks hold more than `chunk_size` images together: a job makes
at most `2 * images / chunk_size + 1` chunks, and `ceil(images / chunk_size)` when every item's count divides
`chunk_size` (100,000 one-image items at 256 a chunk: 391 chunks, not 100,000). Chunking never changes an image's bytes: image `i`
depends on (model version, seed, i, its item's category, ...) alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChunkRange:
    """One planned chunk: indices `[start, stop)`, and the position (among the counts given) of its first item."""

    start: int
    stop: int
    first_item: int


def chunk_ranges(counts: Iterable[int], chunk_size: int) -> Iterator[ChunkRange]:
    """The chunks of items with these image counts (in index order, the first item at index 0)."""
    if chunk_size < 1:
        raise ValueError(f"chunk size {chunk_size}: must be at least 1")
    open_chunk: ChunkRange | None = None
    first_index = 0
    for position, count in enumerate(counts):
        start, stop = first_index, first_index + count
        first_index = stop
        if count <= 0:
            continue
        if open_chunk is not None and (open_chunk.stop - open_chunk.start) + count <= chunk_size:
            open_chunk = ChunkRange(open_chunk.start, stop, open_chunk.first_item)  # joins the open chunk
            continue
        if open_chunk is not None:
            yield open_chunk
        for piece in range(start, stop, chunk_size):
            open_chunk = ChunkRange(piece, min(piece + chunk_size, stop), position)
            if open_chunk.stop - open_chunk.start == chunk_size:
                yield open_chunk  # full: nothing can join it
                open_chunk = None
    if open_chunk is not None:
        yield open_chunk


def count_chunk_ranges(counts: Iterable[int], chunk_size: int) -> int:
    """How many chunks `chunk_ranges` makes, in time linear in the items, not in the chunks.

    For bounds and estimates before a job exists: `chunk_size` 1 and 100,000 items of 100,000 images would
    be 10^10 chunks to walk one by one (hours of a server thread, for one request). The same rule as
    `chunk_ranges`, with the open chunk reduced to its size.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size {chunk_size}: must be at least 1")
    chunks = 0
    open_size = 0  # images in the open chunk; 0: none is open
    for count in counts:
        if count <= 0:
            continue
        if open_size and open_size + count <= chunk_size:
            open_size += count  # joins the open chunk
            continue
        if open_size:
            chunks += 1  # the open chunk is closed
        full, open_size = divmod(count, chunk_size)  # cut from its own start; a short tail stays open
        chunks += full
    return chunks + (1 if open_size else 0)
