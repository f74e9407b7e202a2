"""The SDK against a live stack (uvicorn, a real `catalogan worker`, PostgreSQL, Redis, SeaweedFS): downloads that
resume and skip what is already there, tar jobs exported and verified, and the light install — a venv with
httpx, pydantic and click only (no torch, no SQLAlchemy) — running a real job."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from scheduler.cli.root import cli
from scheduler.client import Client
from tests.scheduler.conftest import LiveStack

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 240
ITEMS = [{"category": "a", "count": 6, "sku": "SKU-1"}, {"category": "c", "count": 4}]
# Pinned to the versions this suite runs with, so a new release on PyPI cannot change what the test installs.
LIGHT_DEPENDENCIES = [f"{name}=={version(name)}" for name in ("httpx", "pydantic", "click")]
SERVER_ONLY = ["torch", "sqlalchemy", "pydantic_settings", "boto3", "rich", "celery", "fastapi", "numpy"]


def sha256(path: Path) -> str:
    """The hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_runs_in_parallel_resumes_and_skips_files_that_match(
    live_stack: LiveStack, tmp_path: Path
) -> None:
    """Given a finished job downloaded once, when one file is deleted, one corrupted and the download runs again,
    then the untouched files are kept as they are (same inode), the other two are restored, and every file
    matches the manifest's sha256."""
    out = tmp_path / "out"
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        job = client.wait(
            client.submit_job(ITEMS, seed=11, chunk_size=4),
            max_poll_seconds=1.0,
            timeout_seconds=WAIT_SECONDS,
        )
        assert job.status == "succeeded", live_stack.worker.log()[-3000:]
        first = client.download(job, out, threads=4)
        assert len(first) == 10 and len({p.parent.name for p in first}) == 2
        inodes = {path: path.stat().st_ino for path in first}
        first[0].unlink()
        first[1].write_bytes(b"half a file")
        second = client.download(job, out, threads=4)
        manifest = {row["index"]: row["sha256"] for row in client.manifest_rows(job)}
    assert second == first
    assert not list(out.rglob("*.part"))
    for path in first[2:]:
        assert path.stat().st_ino == inodes[path], f"{path} was downloaded again"
    assert first[1].stat().st_ino != inodes[first[1]]
    assert sorted(sha256(path) for path in second) == sorted(manifest.values())


def test_a_tar_job_exports_and_verifies(
    live_stack: LiveStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a finished tar job (image rows point at WebDataset shards), when it is exported with
    `catalogan jobs export --images` and its shard index is read, then every PNG comes out of its shard matching
    the manifest's sha256, and each shard's presigned URL serves the tar the index describes."""
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        job = client.submit_job(ITEMS, seed=12, chunk_size=4, output_format="tar")
        job = client.wait(job, max_poll_seconds=1.0, timeout_seconds=WAIT_SECONDS)
        assert job.status == "succeeded", live_stack.worker.log()[-3000:]
        index = client.get_shard_index(job)
    monkeypatch.setenv("CATALOGAN_API_URL", live_stack.url)
    monkeypatch.setenv("CATALOGAN_API_KEY", live_stack.tenant.api_key)
    result = CliRunner().invoke(
        cli,
        [
            "jobs",
            "export",
            job.id,
            "--out",
            str(tmp_path / "manifest.jsonl"),
            "--images",
            str(tmp_path / "img"),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    images = sorted((tmp_path / "img").rglob("*.png"))
    assert len(images) == 10 and {p.parent.name for p in images} == {"SKU-1", "c"}
    by_name = {f"{p.parent.name}/{p.name}": sha256(p) for p in images}
    for row in manifest:
        folder = row["sku"] or row["category"]
        assert by_name[f"{folder}/{row['index']:08d}.png"] == row["sha256"]
    assert index["images"] == 10 and [s["first_index"] for s in index["shards"]] == [0, 4, 6]
    for shard in index["shards"]:
        assert shard["uri"].startswith("s3://") and shard["url"].startswith("http")
        data = httpx.get(shard["url"]).content
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            names = archive.getnames()
        assert len(names) == 2 * shard["images"] and names[0] == f"{shard['first_index']:08d}.png"
    listed = CliRunner().invoke(cli, ["jobs", "shards", job.id, "--format", "tsv"])
    assert listed.exit_code == 0 and len(listed.output.splitlines()) == 1 + len(index["shards"])


LIGHT_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    from scheduler.client import Client

    with Client() as client:
        job = client.submit_job([{"category": "a", "count": 3}], seed=21)
        job = client.wait(job, timeout_seconds=480, poll_seconds=0.3, max_poll_seconds=1.0)
        paths = client.download(job, sys.argv[1])
    missing = [name for name in sys.argv[2].split(",") if importlib.util.find_spec(name) is None]
    print(json.dumps({"status": job.status, "files": len(paths), "missing": missing, "job": job.id,
                      "loaded": sorted(name for name in sys.argv[2].split(",") if name in sys.modules)}))
    """
)


def test_the_light_sdk_runs_a_job_in_a_venv_without_torch(live_stack: LiveStack, tmp_path: Path) -> None:
    """Given a fresh venv (no system site packages) with the project installed without dependencies plus httpx,
    pydantic and click, when the SDK submits a job to the live API, waits and downloads it, and `catalogan jobs`
    lists it, then all of that works while torch, SQLAlchemy and the other server dependencies are absent."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("db", "models", "workers", "scheduler"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *LIGHT_DEPENDENCIES], check=True, timeout=300)
    subprocess.run([*pip, "--no-deps", str(source)], check=True, timeout=300)
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "CATALOGAN_API_URL": live_stack.url,
        "CATALOGAN_API_KEY": live_stack.tenant.api_key,
    }
    run = subprocess.run(
        [str(python), "-c", LIGHT_SCRIPT, str(tmp_path / "out"), ",".join(SERVER_ONLY)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["missing"] == SERVER_ONLY and report["loaded"] == []
    assert report["status"] == "succeeded" and report["files"] == 3, live_stack.worker.log()[-3000:]
    listed = subprocess.run(
        [str(venv / "bin" / "catalogan"), "jobs", "ls"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t")[:2] == ["id", "status"]
    assert any(row.split("\t")[:2] == [report["job"], "succeeded"] for row in rows)


def test_jobs_submit_names_bad_input_as_typed(live_stack: LiveStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the live API, when `catalogan jobs submit` sends a zero count or an unknown model, then the one error
    line names `--category a=0` (not `items.0.count`) or lists the registered models, exit 2, and no job exists."""
    monkeypatch.setenv("CATALOGAN_API_URL", live_stack.url)
    monkeypatch.setenv("CATALOGAN_API_KEY", live_stack.tenant.api_key)
    runner = CliRunner()
    zero = runner.invoke(cli, ["jobs", "submit", "--category", "c=2", "--category", "a=0"])
    assert zero.exit_code == 2, zero.output
    assert "Error: --category a=0: count: Input should be greater than or equal to 1" in zero.output, (
        zero.output
    )
    unknown = runner.invoke(cli, ["jobs", "submit", "--category", "a=2", "--model", "nope"])
    assert unknown.exit_code == 2 and "registered: " in unknown.output and "@1" in unknown.output, (
        unknown.output
    )
    # The option is named once, not the option and then the API's own prefix ("--model: model: ...")
    assert "Error: --model: model 'nope' has no production version" in unknown.output, unknown.output
    with Client(live_stack.url, live_stack.tenant.api_key) as client:
        assert client.list_jobs().jobs == []
