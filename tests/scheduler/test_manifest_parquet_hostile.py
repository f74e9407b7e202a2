"""Forged Parquet manifests: a footer or a page that declares far more than the file holds is refused from the
declaration, before pyarrow allocates for it. Memory is measured as the parsing process's peak RSS in a fresh
interpreter (tracemalloc does not see Arrow's or Thrift's C++ allocations)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from db.storage import ObjectStore
from scheduler.api.item_manifests import parse_item_manifest
from scheduler.api.parquet_manifests import MAX_PARQUET_PAGES
from scheduler.errors import RequestValidationError
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, _app
from tests.scheduler.parquet_forgery import (
    MIB,
    a_footer_declaring,
    a_footer_of_empty_chunks,
    a_footer_of_tiny_chunks,
    a_footer_with_a_bad_level_histogram,
    a_gzip_page_bomb,
    parquet_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
# What one refused file may add to the parsing process's peak RSS.
REFUSAL_BUDGET_MIB = 32
_MEASURE = """
import json, os, resource, sys
import pyarrow.compute, pyarrow.parquet  # imported before the baseline: their code is not the file's cost
from scheduler.api.item_manifests import parse_item_manifest
from scheduler.errors import RequestValidationError
data = open(sys.argv[1], "rb").read()
parse_item_manifest(b"category\\na\\n", "csv")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    items = parse_item_manifest(data, "parquet")
    answer = {"items": len(items)}
except RequestValidationError as exc:
    answer = {"field": exc.field, "rule": exc.rule, "message": str(exc)}
answer["grew_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(answer), flush=True)
os._exit(0)  # no interpreter teardown: only the answer matters
"""


def parse_in_a_fresh_process(data: bytes, tmp_path: Path) -> dict[str, Any]:
    """`parse_item_manifest(data, "parquet")` in a new interpreter: its refusal (or item count) and how much
    its peak RSS grew while it parsed."""
    path = tmp_path / "manifest.parquet"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_a_footer_declaring_a_million_column_chunks_is_refused_before_they_are_reserved(
    tmp_path: Path,
) -> None:
    """Given a 58-byte file whose footer's only row group declares 1,000,000 column chunks (and holds one),
    when it is parsed, then 422 on `file` with rule max_footer_entries, and the parse grew the process by less
    than 32 MiB (pyarrow reserves a list at its declared length: 544 MiB before the bound)."""
    data = a_footer_declaring(1_000_000)
    assert len(data) < 100

    answer = parse_in_a_fresh_process(data, tmp_path)

    assert (answer.get("field"), answer.get("rule")) == ("file", "max_footer_entries"), answer
    assert answer["grew_mib"] < REFUSAL_BUDGET_MIB, answer


def test_column_metadata_that_pyarrow_cannot_read_is_a_422_not_a_dead_process(tmp_path: Path) -> None:
    """Given a 439-byte file whose `category` chunk lists three definition-level counts for a column with two
    levels, when it is parsed, then 422 on `file` with rule parquet, and the process lives to answer (pyarrow's
    `RowGroupMetaData.column()` throws a C++ exception through a binding that cannot catch it: reading the
    row groups' sizes through it aborted the API process)."""
    data = a_footer_with_a_bad_level_histogram()

    answer = parse_in_a_fresh_process(data, tmp_path)

    assert (answer.get("field"), answer.get("rule")) == ("file", "parquet"), answer
    assert "histogram" in answer["message"], answer


def test_a_footer_over_the_byte_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """Given a 2 MiB footer of 3-byte column chunks in lists short enough for the list bound (pyarrow holds
    each in about 700 bytes: 342 MiB before), when it is parsed, then 422 on `file` with rule max_footer_bytes
    naming the footer's length and the 1 MiB bound, within 32 MiB."""
    data = a_footer_of_tiny_chunks(2 * MIB)

    answer = parse_in_a_fresh_process(data, tmp_path)

    assert (answer.get("field"), answer.get("rule")) == ("file", "max_footer_bytes"), answer
    assert str(1024 * 1024) in answer["message"], answer
    assert answer["grew_mib"] < REFUSAL_BUDGET_MIB, answer


@pytest.mark.slow
def test_a_compressed_page_bigger_than_its_footer_says_is_refused_before_it_is_decompressed(
    tmp_path: Path,
) -> None:
    """Given a 260 KB file whose one gzip page decompresses to 256 MiB while the footer declares 100 bytes,
    when it is parsed, then 422 on `file` with rule max_decoded_bytes (the page header's size is over the
    64 MiB bound) within 32 MiB (637 MiB before: the page was decompressed, then its cell refused); and when
    the page header lies too, pyarrow's decompression into the declared size fails: 422 rule parquet, within
    32 MiB."""
    bomb = a_gzip_page_bomb(256 * MIB)
    assert len(bomb) < 512 * 1024

    answer = parse_in_a_fresh_process(bomb, tmp_path)

    assert (answer.get("field"), answer.get("rule")) == ("file", "max_decoded_bytes"), answer
    assert answer["grew_mib"] < REFUSAL_BUDGET_MIB, answer

    lying = parse_in_a_fresh_process(a_gzip_page_bomb(256 * MIB, page_declares=1024), tmp_path)

    assert (lying.get("field"), lying.get("rule")) == ("file", "parquet"), lying
    assert lying["grew_mib"] < REFUSAL_BUDGET_MIB, lying


def _categories(rows: int) -> pa.Table:
    return pa.table({"category": pa.array(["a"] * rows)})


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (parquet_bytes(pa.table({f"c{i}": [1] for i in range(1_000)} | {"category": ["a"]})), "max_columns"),
        (parquet_bytes(_categories(1_001), row_group_size=1), "max_row_groups"),
        (a_footer_of_empty_chunks(1_000, 21), "max_column_chunks"),
        (
            parquet_bytes(
                _categories(MAX_PARQUET_PAGES + 1), data_page_size=1, write_batch_size=1, use_dictionary=False
            ),
            "max_pages",
        ),
    ],
    ids=["1001-columns", "1001-row-groups", "21000-column-chunks", "10001-pages"],
)
def test_columns_row_groups_and_pages_are_bounded_from_the_footer_and_the_page_headers(
    data: bytes, rule: str
) -> None:
    """Given a file of 1,001 columns, one of 1,001 one-row groups, a 74 KB footer of 21 row groups of 1,000
    columns (pyarrow holds each column chunk in about 700 bytes) and a file whose category column has 10,001
    pages (each accepted before: unknown columns are ignored, and the rows are few), when parsed, then 422 on
    `file` naming the rule."""
    with pytest.raises(RequestValidationError) as refused:
        parse_item_manifest(data, "parquet")
    assert (refused.value.field, refused.value.rule) == ("file", rule)


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "none"},
        {"compression": "snappy", "data_page_version": "2.0"},
        {"compression": "gzip", "write_page_checksum": True},
        {"compression": "zstd", "write_page_index": True, "row_group_size": 700},
        {"compression": "lz4", "use_dictionary": False, "data_page_size": 512},
        {"compression": "brotli", "data_page_version": "2.0", "write_statistics": False},
    ],
    ids=["none", "snappy-v2", "gzip-crc", "zstd-page-index", "lz4-plain-small-pages", "brotli-v2"],
)
def test_ordinary_parquet_exports_still_become_items(options: dict[str, Any]) -> None:
    """Given a catalog export of 2,000 rows with extra columns (pages v1 and v2, dictionaries, page checksums,
    page indexes, statistics, every codec pyarrow writes), when parsed, then every row is an item."""
    rows = 2_000
    table = pa.table(
        {
            "sku": [f"SKU-{i:05d}" for i in range(rows)],
            "category": [("sneaker", "boot", "sandal")[i % 3] for i in range(rows)],
            "count": [1 + i % 4 for i in range(rows)],
            "title": [f"a product title {i} " * 3 for i in range(rows)],
            "price": [9.99 + i for i in range(rows)],
        }
    )
    items = parse_item_manifest(parquet_bytes(table, **options), "parquet")
    assert len(items) == rows
    assert (items[5].sku, items[5].category, items[5].count) == ("SKU-00005", "sandal", 2)


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
@hypothesis.given(st.data())
def test_a_file_with_any_bytes_changed_is_items_or_a_422(data: st.DataObject) -> None:
    """Given an ordinary export with up to 8 bytes overwritten anywhere (headers, pages, footer), when parsed,
    then the answer is items or a RequestValidationError, never another exception."""
    original = bytearray(_SMALL_EXPORT)
    for _ in range(data.draw(st.integers(1, 8))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(RequestValidationError):
        parse_item_manifest(bytes(original), "parquet")


_SMALL_EXPORT = parquet_bytes(
    pa.table({"category": ["a", "b"] * 50, "sku": [f"S{i}" for i in range(100)], "count": [2] * 100}),
    compression="zstd",
    row_group_size=40,
)


def test_the_submit_and_the_estimate_read_the_parquet_bounds_from_the_settings(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    s3_store: ObjectStore,
    make_tenant: Callable[..., Credentials],
    tmp_path: Path,
) -> None:
    """Given the API with CATALOGAN_MANIFEST_PARQUET_MAX_ROW_GROUPS=2 and a 3-row-group manifest, when it is
    uploaded to POST /v1/jobs and named by manifest_uri in POST /v1/jobs:estimate, then both are 422 naming
    `file` and max_row_groups, and a 2-row-group one makes a job."""
    a = make_tenant()
    settings = ApiSettings(manifest_parquet_max_row_groups=2)
    api = TestClient(_app(pg_factory, s3_store, [], tmp_path, settings, WebhookSettings()))
    three = parquet_bytes(_categories(3), row_group_size=1)
    s3_store.put(f"{a.tenant_id}/uploads/three.parquet", three)

    uploaded = api.post("/v1/jobs", files={"file": ("three.parquet", three)}, headers=a.headers)
    estimated = api.post(
        "/v1/jobs:estimate",
        json={"manifest_uri": s3_store.uri(f"{a.tenant_id}/uploads/three.parquet")},
        headers=a.headers,
    )
    two = parquet_bytes(_categories(2), row_group_size=1)
    accepted = api.post("/v1/jobs", files={"file": ("two.parquet", two)}, headers=a.headers)

    for response in (uploaded, estimated):
        assert response.status_code == 422, response.text
        error = response.json()["errors"][0]
        assert (error["field"], error["rule"]) == ("file", "max_row_groups"), error
    assert accepted.status_code == 201, accepted.text
    api.close()
