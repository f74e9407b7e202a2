"""`ObjectStore.get_many`: bulk reads in order with a bounded number in flight (unit, no services)."""

from __future__ import annotations

import threading
import time

import pytest

from db.errors import ObjectNotFoundError
from db.storage.base import threaded_gets
from db.storage.memory import MemoryStore


def test_reads_run_concurrently_but_never_more_than_in_flight_and_come_back_in_order() -> None:
    # Given a read that takes a few milliseconds and counts how many run at once; the first four wait for
    # each other (up to 30 s), since a loaded machine may start their threads further apart than one read
    # lasts, and then no four would ever have overlapped
    running, most, started = 0, 0, 0
    lock = threading.Lock()
    first_four_started = threading.Event()

    def get(key: str) -> bytes:
        nonlocal running, most, started
        with lock:
            running += 1
            most = max(most, running)
            started += 1
            if started == 4:
                first_four_started.set()
        assert first_four_started.wait(30), f"only {started} of the first 4 reads were let run at once"
        time.sleep(0.005)
        with lock:
            running -= 1
        return key.encode()

    keys = [f"k{index:03d}" for index in range(60)]
    # When 60 keys are read 4 at a time
    results = list(threaded_gets(get, keys, in_flight=4))
    # Then every key comes back in order with its bytes, and reads overlapped up to, never past, 4
    assert results == [(key, key.encode()) for key in keys]
    assert most == 4


def test_the_first_error_is_raised_in_order_and_nothing_more_starts() -> None:
    # Given a store where the sixth of 40 keys is missing
    store = MemoryStore()
    keys = [f"a/{index:02d}" for index in range(40)]
    for key in keys:
        if key != "a/05":
            store.put(key, key.encode())
    seen: list[str] = []
    # When they are read 3 at a time
    with pytest.raises(ObjectNotFoundError):
        for key, _ in store.get_many(keys, in_flight=3):
            seen.append(key)
    # Then the five before it came back, and the error is the missing key's
    assert seen == keys[:5]


def test_in_flight_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="in_flight: 0 must be at least 1"):
        list(threaded_gets(lambda key: b"", ["k"], in_flight=0))
