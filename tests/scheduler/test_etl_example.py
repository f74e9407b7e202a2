"""docs/examples/etl_catalog.py on bad input and bad answers: one `Error:` line naming the file and line, the option
or the variable, catalogan's exit codes, and nothing submitted or written. The API is an httpx mock here;
`test_sdk_end_to_end.py::test_the_etl_example_writes_the_manifest_back_as_csv` runs the script against a real one.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from scheduler.client import Client

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "etl_catalog.py"
CATALOG = (
    "sku,category,title,image_url\nSKU-1,sneaker,Red sneaker,\nSKU-2,dress,Blue dress,https://cdn/x.jpg\n"
)
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def etl() -> ModuleType:
    """The example script, imported as a module."""
    spec = importlib.util.spec_from_file_location("etl_catalog", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding catalog.csv, with a well-formed API URL and key in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CATALOGAN_API_URL", "http://api.test")
    monkeypatch.setenv("CATALOGAN_API_KEY", "cg_test_key")
    (tmp_path / "catalog.csv").write_text(CATALOG)
    return tmp_path


def serve(etl: ModuleType, monkeypatch: pytest.MonkeyPatch, handler: Handler) -> list[httpx.Request]:
    """Point the script's client at `handler` (no retries, no sleeping); return the requests it gets."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    transport = httpx.MockTransport(record)
    monkeypatch.setattr(
        etl, "Client", functools.partial(Client, transport=transport, max_retries=0, sleep=lambda _: None)
    )
    return seen


def job_body(status: str, **counts: int) -> dict[str, Any]:
    return {"id": "job1", "status": status, "seed": 7, "counts": {"images_total": 1, **counts}}


def run_main(etl: ModuleType, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The script's exit code and stderr, whether it returned the code or argparse exited with it."""
    try:
        code = etl.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize(
    ("catalog", "argv", "message"),
    [
        (None, ["missing.csv", "out.csv"], "Error: missing.csv: no such file"),
        (None, [".", "out.csv"], "Error: .: cannot read it"),
        (
            "",
            ["catalog.csv", "out.csv"],
            "Error: catalog.csv: empty file (expected a header with sku,category)",
        ),
        ("sku,title\nA,x\n", ["catalog.csv", "out.csv"], "Error: catalog.csv: no category column"),
        (
            "sku,category,image_url\n,dress,\n",
            ["catalog.csv", "out.csv"],
            "Error: catalog.csv line 2: empty sku",
        ),
        (
            "sku,category\nA,dress\nB\n",
            ["catalog.csv", "out.csv"],
            "Error: catalog.csv line 3: empty category",
        ),
        (b"\xff\xfes\x00k\x00u\x00", ["catalog.csv", "out.csv"], "Error: catalog.csv: not UTF-8 text"),
        (CATALOG, ["catalog.csv", "no/such/folder/out.csv"], "Error: no/such/folder/out.csv: its folder"),
        (CATALOG, ["catalog.csv", "."], "Error: .: is a folder"),
        (
            CATALOG,
            ["catalog.csv", "out.csv", "--per-sku", "0"],
            "Error: argument --per-sku: must be at least 1",
        ),
        (
            CATALOG,
            ["catalog.csv", "out.csv", "--per-sku", "two"],
            "Error: argument --per-sku: must be a whole",
        ),
        (CATALOG, ["catalog.csv"], "Error: the following arguments are required: out"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_submitted(
    etl: ModuleType,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    catalog: str | bytes | None,
    argv: list[str],
    message: str,
) -> None:
    # Given a catalog (or none) and arguments that break a rule
    if catalog is not None:
        path = folder / "catalog.csv"
        path.write_bytes(catalog if isinstance(catalog, bytes) else catalog.encode())
    requests = serve(etl, monkeypatch, lambda _request: httpx.Response(500))
    # When the script runs
    code, stderr = run_main(etl, capsys, *argv)
    # Then one line names the file (and line) or option, exit 2, and the API never heard of it
    assert code == 2, stderr
    assert one_error_line(stderr).startswith(message), stderr
    assert requests == [] and not (folder / "out.csv").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CATALOGAN_API_KEY": ""}, "Error: CATALOGAN_API_KEY is not set"),
        (
            {"CATALOGAN_API_KEY": "cg key with spaces"},
            "Error: CATALOGAN_API_KEY: the API key must be printable",
        ),
        (
            {"CATALOGAN_API_URL": "localhost:8000"},
            "Error: CATALOGAN_API_URL='localhost:8000': expected http(s)://",
        ),
        ({"CATALOGAN_API_URL": "http://api:99999"}, "Error: CATALOGAN_API_URL='http://api:99999': expected"),
    ],
)
def test_a_missing_or_malformed_setting_is_exit_6_naming_the_variable(
    etl: ModuleType,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    requests = serve(etl, monkeypatch, lambda _request: httpx.Response(500))
    code, stderr = run_main(etl, capsys, "catalog.csv", "out.csv")
    assert code == 6 and one_error_line(stderr).startswith(message), stderr
    assert "with spaces" not in stderr  # the key itself is never echoed
    assert requests == []


def _problem(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return httpx.Response(status, json=body)


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


@pytest.mark.parametrize(
    ("answer", "argv", "code", "message"),
    [
        (
            lambda _r: _problem(401, "unknown API key"),
            [],
            6,
            "Error: CATALOGAN_API_KEY was refused by the API",
        ),
        (
            lambda _r: _problem(
                422,
                "items[0].category: 'sneakr' is not a category",
                [{"field": "items[0].category", "message": "items[0].category: 'sneakr' is not a category"}],
            ),
            [],
            2,
            "Error: catalog.csv line 2 (SKU-1): category: 'sneakr' is not a category",
        ),
        (
            lambda _r: _problem(
                422, "too many", [{"field": "body.items.0.count", "message": "must be ≤ 100000"}]
            ),
            ["--per-sku", "200000"],
            2,
            "Error: --per-sku 200000: must be ≤ 100000",
        ),
        (
            lambda _r: _problem(
                422, "bad model", [{"field": "model", "message": "model: nope@9 is not registered"}]
            ),
            ["--model", "nope@9"],
            2,
            "Error: --model: nope@9 is not registered",
        ),
        (
            lambda _r: httpx.Response(404, text="Not Found"),
            [],
            6,
            "Error: HTTP 404: Not Found: is CATALOGAN_API_URL",
        ),
        (
            lambda _r: _problem(503, "database down"),
            [],
            5,
            "Error: the API is unavailable (HTTP 503: database down)",
        ),
        (_unreachable, [], 5, "Error: the API did not answer (POST http://api.test/v1/jobs: [Errno 111]"),
    ],
    ids=["bad-key", "bad-category", "bad-count", "bad-model", "not-the-api", "unavailable", "unreachable"],
)
def test_what_the_api_says_is_one_line_with_catalogans_exit_code(
    etl: ModuleType,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answer: Handler,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    # Given an API that refuses the submit, or does not answer
    serve(etl, monkeypatch, answer)
    # When the script runs
    exit_code, stderr = run_main(etl, capsys, "catalog.csv", "out.csv", *argv)
    # Then one line says what the API said, in the catalog's and the options' terms, and nothing is written
    assert exit_code == code and one_error_line(stderr).startswith(message), stderr
    assert not (folder / "out.csv").exists()


@pytest.mark.parametrize(
    ("status", "counts", "code", "message"),
    [
        ("failed", {}, 7, "Error: job job1 ended failed: no worker"),
        (
            "completed_with_failures",
            {"images_failed": 1},
            10,
            "Error: job job1 completed with 1 of 1 images failed",
        ),
    ],
)
def test_a_job_that_does_not_succeed_exits_with_catalogans_job_codes(
    etl: ModuleType,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: str,
    counts: dict[str, int],
    code: int,
    message: str,
) -> None:
    finished = {**job_body(status, **counts), "error": "no worker"}

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=job_body("queued"))
        return httpx.Response(200, json=finished)

    serve(etl, monkeypatch, api)
    exit_code, stderr = run_main(etl, capsys, "catalog.csv", "out.csv")
    assert exit_code == code and one_error_line(stderr).startswith(message), stderr
    assert not (folder / "out.csv").exists()


def test_a_good_run_writes_the_manifest_of_the_skus_without_an_image(
    etl: ModuleType, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = {"index": 0, "sku": "SKU-1", "category": "sneaker", "key": "t/jobs/job1/SKU-1/00000000.png"}

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            assert json.loads(request.content)["items"] == [
                {"sku": "SKU-1", "category": "sneaker", "count": 1}
            ]
            return httpx.Response(201, json=job_body("queued"))
        if request.url.path.endswith("/manifest"):
            return httpx.Response(200, text=json.dumps(manifest) + "\n")
        return httpx.Response(200, json=job_body("succeeded", images_done=1))

    serve(etl, monkeypatch, api)
    code, stderr = run_main(etl, capsys, "catalog.csv", "out.csv")
    assert code == 0, stderr
    assert (folder / "out.csv").read_text().splitlines()[1].startswith("SKU-1,sneaker,0,t/jobs/job1/")


def test_run_as_a_script_a_missing_catalog_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "CATALOGAN_API_KEY": "cg_test_key", "CATALOGAN_API_URL": "http://127.0.0.1:9"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLE.parents[2]), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "missing.csv", "out.csv"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "Error: missing.csv: no such file\n"


def test_a_catalog_with_nothing_to_generate_submits_nothing_and_writes_an_empty_manifest(
    etl: ModuleType, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A nightly run on a catalog whose every SKU has an image has nothing to do, which is not a failure: exit 0,
    no request to the API, and the output holds the header alone (not yesterday's rows)."""
    (folder / "catalog.csv").write_text("sku,category,image_url\nSKU-1,sneaker,https://cdn/a.jpg\n")
    (folder / "out.csv").write_text("yesterday's rows\n")
    seen = serve(etl, monkeypatch, lambda request: httpx.Response(500))
    code, stderr = run_main(etl, capsys, "catalog.csv", "out.csv")
    assert (code, seen) == (0, [])
    assert "every SKU already has an image; nothing submitted" in stderr and "Error" not in stderr
    assert (folder / "out.csv").read_text().splitlines() == [",".join(etl.OUTPUT_COLUMNS)]


def test_a_rerun_with_another_model_is_another_idempotency_key(
    etl: ModuleType, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given the same catalog and options, when the script runs again with the same `--model` and then with
    another, then the rerun sends the same Idempotency-Key (the API returns the same job) and the other model a
    different one (a new job, not a 422 for a key reused with another body)."""

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=job_body("queued"))
        if request.url.path.endswith("/manifest"):
            return httpx.Response(200, text="")
        return httpx.Response(200, json=job_body("succeeded", images_done=1))

    seen = serve(etl, monkeypatch, api)
    for model in ("fashion-cgan@1", "fashion-cgan@1", "fashion-cgan@2"):
        code, stderr = run_main(etl, capsys, "catalog.csv", "out.csv", "--seed", "7", "--model", model)
        assert code == 0, stderr
    keys = [request.headers["Idempotency-Key"] for request in seen if request.method == "POST"]
    assert keys[0] == keys[1] != keys[2]
    # Without --model, the key is what it was before the model was hashed (a rerun across the upgrade
    # returns the job it made then).
    catalog = folder / "catalog.csv"
    assert (
        etl.idempotency_key(catalog, 1, 7, None)
        == "etl-" + hashlib.sha256(catalog.read_bytes() + b"|1|7").hexdigest()[:40]
    )


def test_the_manifest_csv_carries_skus_as_they_are_for_the_loader(
    etl: ModuleType, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given SKUs a spreadsheet would read as formulas (`-100-BLK`, valid in the API), when the manifest is
    written, then each is the catalog's own SKU, unprefixed, so a loader joining on `sku` finds it."""
    (folder / "catalog.csv").write_text("sku,category,image_url\n-100-BLK,sneaker,\n+7,dress,\n")
    manifest = [
        {"index": 0, "sku": "-100-BLK", "category": "sneaker", "key": "t/jobs/job1/-100-BLK/00000000.png"},
        {"index": 1, "sku": "+7", "category": "dress", "key": "t/jobs/job1/+7/00000001.png"},
    ]

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=job_body("queued"))
        if request.url.path.endswith("/manifest"):
            return httpx.Response(200, text="".join(json.dumps(row) + "\n" for row in manifest))
        return httpx.Response(200, json=job_body("succeeded", images_done=2))

    serve(etl, monkeypatch, api)
    code, stderr = run_main(etl, capsys, "catalog.csv", "out.csv")
    assert code == 0, stderr
    with (folder / "out.csv").open(newline="") as handle:
        assert [row["sku"] for row in csv.DictReader(handle)] == ["-100-BLK", "+7"]
