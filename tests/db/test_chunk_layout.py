"""The chunk layout (db.chunk_layout): small items share chunks, large ones are cut alone, every index once."""

from __future__ import annotations

import random

from db.chunk_layout import ChunkRange, chunk_ranges, count_chunk_ranges


def test_consecutive_small_items_share_a_chunk_and_large_items_are_cut_at_their_own_start() -> None:
    # Given items of 3, a skipped one (0), 2, 300, 1 and 1 images at 256 a chunk
    ranges = list(chunk_ranges([3, 0, 2, 300, 1, 1], 256))
    # Then the two small items share a chunk, the large one starts its own, and its tail takes the last two
    assert ranges == [ChunkRange(0, 5, 0), ChunkRange(5, 261, 3), ChunkRange(261, 307, 3)]
    # And 100,000 one-image items make 391 chunks, not 100,000
    assert count_chunk_ranges([1] * 100_000, 256) == 391


def test_every_layout_covers_each_index_once_within_its_bounds() -> None:
    """Random layouts: contiguous cover, at most chunk_size a chunk, at most 2 × images / chunk_size + 1 chunks,
    each chunk's first item holds its start, and an item of at most chunk_size images is never split."""
    rng = random.Random(7)
    for _ in range(2000):
        size = rng.randint(1, 50)
        counts = [rng.choice([0, 1, 2, 3, rng.randint(1, 200)]) for _ in range(rng.randint(0, 40))]
        ranges = list(chunk_ranges(counts, size))
        firsts = [sum(counts[:position]) for position in range(len(counts))]
        position = 0
        for part in ranges:
            assert part.start == position and 0 < part.stop - part.start <= size
            assert firsts[part.first_item] <= part.start < firsts[part.first_item] + counts[part.first_item]
            position = part.stop
        assert position == sum(counts) and len(ranges) <= 2 * sum(counts) / size + 1
        for item, count in enumerate(counts):
            if 0 < count <= size:
                start, stop = firsts[item], firsts[item] + count
                assert sum(part.start < stop and part.stop > start for part in ranges) == 1


def test_the_count_is_the_layouts_length_and_takes_time_in_items_not_chunks() -> None:
    """`count_chunk_ranges` computes what walking `chunk_ranges` counts, without walking it: random layouts
    agree, and 100,000 items of 100,000 images at one image a chunk (10^10 chunks, hours to walk) count at once."""
    rng = random.Random(11)
    for _ in range(3000):
        size = rng.randint(1, 40)
        counts = [
            rng.choice([0, 1, 2, size - 1, size, size + 1, rng.randint(1, 150)])
            for _ in range(rng.randint(0, 30))
        ]
        assert count_chunk_ranges(counts, size) == len(list(chunk_ranges(counts, size)))
    assert count_chunk_ranges([100_000] * 100_000, 1) == 10**10
    assert count_chunk_ranges([3, 0, 2, 300, 1, 1], 256) == 3
