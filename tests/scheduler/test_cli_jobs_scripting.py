"""`catalogan jobs` as an ETL orchestrator drives it, against a live API on real PostgreSQL: `ls` pages with
`--cursor` / `--all`, `submit --idempotency-key` makes a rerun return the same job, `export --format csv --raw`
writes SKUs unchanged, and the `shards` help pipeline hands curl URLs only."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import manifest_keys
from db.status import JobStatus
from db.storage import MemoryStore
from db.tables import Job
from scheduler.cli import jobs as jobs_cli
from scheduler.cli.root import cli
from scheduler.client import Client
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app


def run(args: list[str], env: dict[str, str]) -> Result:
    """Invoke `catalogan` with `env`; the result keeps stdout and stderr apart."""
    return CliRunner().invoke(cli, args, env=env, prog_name="catalogan")


def one_error_line(result: Result) -> str:
    """The single `Error:` line a refused command printed (and no traceback)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@dataclass
class LiveApi:
    """A live API server, the CLI's environment for tenant acme, and its object store."""

    url: str
    env: dict[str, str]
    store: MemoryStore
    tenant: Credentials

    def submit(self, category: str = "a") -> str:
        """Submit a one-image job straight through HTTP; its id."""
        response = httpx.post(
            f"{self.url}/v1/jobs",
            json={"items": [{"category": category, "count": 1}]},
            headers=self.tenant.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@pytest.fixture
def live_api(
    pg_factory: sessionmaker[Session],
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> LiveApi:
    """uvicorn on loopback serving the API (memory object store) and tenant acme's CLI environment."""
    tenant = make_tenant("acme", max_concurrent_jobs=50)
    store = MemoryStore()
    server = live_server_factory(_app(pg_factory, store, [], tmp_path, ApiSettings(), WebhookSettings()))
    env = {"CATALOGAN_API_URL": server.url, "CATALOGAN_API_KEY": tenant.api_key}
    return LiveApi(server.url, env, store, tenant)


def listed_ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [job["id"] for job in json.loads(result.stdout)]


def next_cursor(result: Result) -> str | None:
    found = re.findall(r"^next cursor: (\S+)$", result.stderr, flags=re.MULTILINE)
    assert len(found) <= 1, result.stderr
    return found[0] if found else None


# --- jobs ls: pages ------------------------------------------------------------------------------------


def test_ls_pages_with_cursor_and_lists_every_job_with_all(live_api: LiveApi) -> None:
    """Given 5 jobs, when `jobs ls --json --limit 2` is followed by `--cursor` and compared with `--all`, then
    each page is a plain JSON list (as before), the next cursor is on stderr until the last page, the pages
    together are every job newest first, and `--all` gives the same jobs at once with no cursor left."""
    ids = [live_api.submit() for _ in range(5)]
    newest_first = ids[::-1]

    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(3):
        page = run(
            ["jobs", "ls", "--json", "--limit", "2", *(["--cursor", cursor] if cursor else [])], live_api.env
        )
        pages.append(listed_ids(page))
        cursor = next_cursor(page)
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    assert cursor is None

    every = run(["jobs", "ls", "--json", "--limit", "2", "--all"], live_api.env)
    assert listed_ids(every) == newest_first
    assert next_cursor(every) is None

    # From a cursor on, --all follows the rest; a table on a pipe (TSV) tells the cursor the same way.
    first = run(["jobs", "ls", "--limit", "2", "--format", "tsv"], live_api.env)
    assert first.exit_code == 0 and len(first.stdout.splitlines()) == 1 + 2, first.output
    rest = run(
        ["jobs", "ls", "--json", "--limit", "2", "--all", "--cursor", str(next_cursor(first))], live_api.env
    )
    assert listed_ids(rest) == newest_first[2:]


def test_ls_all_is_not_capped_at_the_largest_page(live_api: LiveApi) -> None:
    """Given more jobs than one page holds, when listed with `--all --limit 1`, then every one of them comes back
    (`--limit` is the page size there, not a cap)."""
    ids = [live_api.submit() for _ in range(3)]
    assert sorted(listed_ids(run(["jobs", "ls", "--json", "--limit", "1", "--all"], live_api.env))) == sorted(
        ids
    )


def test_a_cursor_the_api_never_issued_is_one_line_naming_the_option(live_api: LiveApi) -> None:
    """Given a made-up cursor, when `jobs ls --cursor` is given it, then exit 2 with one Error line naming
    --cursor, and nothing on stdout."""
    result = run(["jobs", "ls", "--json", "--cursor", "not-a-cursor"], live_api.env)
    assert result.exit_code == 2, result.output
    assert "--cursor" in one_error_line(result) and result.stdout == ""


# --- jobs submit --idempotency-key -------------------------------------------------------------------------


def test_a_rerun_submit_with_the_same_idempotency_key_returns_the_same_job(live_api: LiveApi) -> None:
    """Given `jobs submit --idempotency-key K` ran once, when the orchestrator reruns the same command (as after
    exit 5), then the same job id comes back and no second job exists; the same key with another request is
    one line naming --idempotency-key, exit 2."""
    args = ["jobs", "submit", "--category", "a=2", "--seed", "7", "--idempotency-key", "nightly-2027-03-01"]
    first = run(args, live_api.env)
    assert first.exit_code == 0, first.output
    again = run(args, live_api.env)
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout and len(first.stdout.split()) == 1
    assert "already submitted" in again.stderr
    assert listed_ids(run(["jobs", "ls", "--json"], live_api.env)) == [first.stdout.strip()]

    other = run([*args[:3], "b=2", *args[4:]], live_api.env)
    assert other.exit_code == 2, other.output
    assert one_error_line(other).startswith("Error: --idempotency-key: ")
    assert listed_ids(run(["jobs", "ls", "--json"], live_api.env)) == [first.stdout.strip()]


@pytest.mark.parametrize("key", ["", " padded", "x" * 256, "bad\tkey", "clé"])
def test_a_bad_idempotency_key_is_one_line_naming_the_option_and_submits_nothing(
    live_api: LiveApi, key: str
) -> None:
    """Given a key the API would refuse (empty, surrounding space, too long, a control or non-ASCII character),
    when `jobs submit --idempotency-key` is given it, then exit 2, one Error line naming the option and the
    rule, and no job."""
    result = run(["jobs", "submit", "--category", "a=1", "--idempotency-key", key], live_api.env)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "--idempotency-key" in line and "printable ASCII" in line, line
    assert listed_ids(run(["jobs", "ls", "--json"], live_api.env)) == []


# --- jobs export --format csv [--raw] ----------------------------------------------------------------------


def finish_with_manifest(
    live_api: LiveApi, pg_factory: sessionmaker[Session], rows: list[dict[str, Any]]
) -> str:
    """A job made succeeded with `rows` as its manifest; its id."""
    job_id = live_api.submit()
    jsonl_key, _ = manifest_keys(live_api.tenant.tenant_id, job_id)
    live_api.store.put(jsonl_key, "".join(json.dumps(row) + "\n" for row in rows).encode())
    with transaction(pg_factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, manifest_key=jsonl_key)
        )
    return job_id


def test_export_csv_is_spreadsheet_safe_by_default_and_raw_with_raw(
    live_api: LiveApi, pg_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Given a manifest whose SKU starts with '-' (valid in the API), when exported as CSV, then by default the
    cell is made text for a spreadsheet ('-100-BLK), and with --raw it is written unchanged for a loader."""
    row = {"index": 0, "sku": "-100-BLK", "category": "a", "key": "k", "sha256": "ab", "status": "succeeded"}
    job_id = finish_with_manifest(live_api, pg_factory, [row])

    safe = run(["jobs", "export", job_id, "--format", "csv"], live_api.env)
    raw = run(
        ["jobs", "export", job_id, "--format", "csv", "--raw", "--out", str(tmp_path / "m.csv")], live_api.env
    )

    assert safe.exit_code == 0 and raw.exit_code == 0, safe.output + raw.output
    assert safe.stdout.splitlines()[1].startswith("0,'-100-BLK,a,k,ab,")
    assert (tmp_path / "m.csv").read_text().splitlines()[1].startswith("0,-100-BLK,a,k,ab,")


def test_raw_with_another_format_is_one_line_naming_the_option(live_api: LiveApi, tmp_path: Path) -> None:
    """Given --raw, which only changes CSV, when asked with --format jsonl, then exit 2 naming --raw, no file."""
    result = run(["jobs", "export", "0" * 32, "--raw", "--out", str(tmp_path / "m.jsonl")], live_api.env)
    assert result.exit_code == 2, result.output
    assert "--raw" in one_error_line(result)
    assert not (tmp_path / "m.jsonl").exists()


# --- jobs shards: the help's pipeline ----------------------------------------------------------------------


class ShardIndexClient:
    """Stands in for the SDK `Client`: a shard index of two shards."""

    SHARDS: ClassVar[list[dict[str, Any]]] = [
        {
            "first_index": 0,
            "last_index": 3,
            "images": 4,
            "size_bytes": 10,
            "url": "https://s3/shard-0.tar?sig=1",
        },
        {
            "first_index": 4,
            "last_index": 5,
            "images": 2,
            "size_bytes": 5,
            "url": "https://s3/shard-1.tar?sig=2",
        },
    ]

    def __enter__(self) -> ShardIndexClient:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def get_shard_index(self, _job_id: str) -> dict[str, Any]:
        return {"images": 6, "shards": self.SHARDS}


def test_the_shards_help_pipeline_hands_curl_only_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the pipeline in `jobs shards --help`, when it runs on the command's own TSV (curl replaced by echo),
    then it passes the shard URLs and nothing else (not the header's `url`)."""
    monkeypatch.setattr(jobs_cli, "_client", ShardIndexClient)
    help_text = run(["jobs", "shards", "--help"], {}).stdout
    example = next(
        line.strip() for line in help_text.splitlines() if line.strip().startswith("catalogan jobs shards")
    )
    command, _, pipeline = example.partition(" | ")
    assert "curl -sO" in pipeline, example
    tsv = run([*command.split()[1:]], {})
    assert tsv.exit_code == 0, tsv.output

    fed = subprocess.run(
        ["bash", "-c", pipeline.replace("curl -sO", "echo")],
        input=tsv.stdout,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert fed.stdout.splitlines() == [shard["url"] for shard in ShardIndexClient.SHARDS]


def test_export_streams_every_format_and_leaves_out_as_it_was_when_the_answer_breaks_off(
    live_api: LiveApi, pg_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a 3,000-row manifest, when exported as JSONL to stdout and to a file, and as CSV, then each holds
    every row (JSONL the API's own bytes); and when the answer is over the client's cap mid-stream, an existing
    --out file is left as it was (the manifest is written to a temporary name and renamed only when complete)."""
    rows = [
        {"index": i, "sku": f"S{i}", "category": "a", "key": f"k{i}", "sha256": "ab", "status": "succeeded"}
        for i in range(3_000)
    ]
    job_id = finish_with_manifest(live_api, pg_factory, rows)

    to_stdout = run(["jobs", "export", job_id], live_api.env)
    to_file = run(["jobs", "export", job_id, "--out", str(tmp_path / "m.jsonl")], live_api.env)
    as_csv = run(["jobs", "export", job_id, "--format", "csv", "--out", str(tmp_path / "m.csv")], live_api.env)

    assert to_stdout.exit_code == to_file.exit_code == as_csv.exit_code == 0, to_stdout.output + as_csv.output
    assert to_stdout.stdout_bytes == (tmp_path / "m.jsonl").read_bytes()
    served = [json.loads(line) for line in to_stdout.stdout.splitlines()]
    assert [row["index"] for row in served] == list(range(3_000)) and served[0]["review"] == "pending"
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert len(lines) == 3_001 and lines[0].startswith("index,sku,category,key,") and lines[-1].startswith("2999,S2999,")

    (tmp_path / "m.jsonl").write_text("the earlier export\n")
    monkeypatch.setattr(jobs_cli, "Client", functools.partial(Client, max_manifest_bytes=10_000))
    cut = run(["jobs", "export", job_id, "--out", str(tmp_path / "m.jsonl")], live_api.env)
    assert cut.exit_code != 0 and "over 10000 bytes" in cut.output, cut.output
    assert (tmp_path / "m.jsonl").read_text() == "the earlier export\n"
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".part")] == []
