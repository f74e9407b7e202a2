"""`catalogan generate` on the embedded default: SQLite + a local folder + a filesystem broker, no servers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from db import migrate
from db.engine import make_engine, make_session_factory
from db.storage import ObjectStore, open_store
from db.tables import Job
from tests.pipeline import CATALOGAN, make_model_version, pipeline_env, tiny_checkpoint

pytestmark = pytest.mark.slow


def _embedded_folder(root: Path) -> Path:
    """A working folder whose ./catalogan-data holds a migrated SQLite file and a registered tiny model."""
    data = root / "catalogan-data"
    url = f"sqlite:///{data / 'catalogan.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    make_model_version(
        make_session_factory(engine),
        checkpoint=tiny_checkpoint(),
        store=open_store((data / "objects").as_uri()),
    )
    engine.dispose()
    return root


def _generate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*CATALOGAN, "generate", "--model", "tiny", *args]
    return subprocess.run(command, cwd=cwd, env=pipeline_env(), capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_generate_twice_with_the_same_seed_gives_identical_files(tmp_path: Path) -> None:
    # Given two fresh embedded installations (no servers: SQLite, local folder, filesystem broker)
    first, second = _embedded_folder(tmp_path / "one"), _embedded_folder(tmp_path / "two")
    args = [
        "--category",
        "a=40",
        "--category",
        "c=25",
        "--seed",
        "7",
        "--chunk-size",
        "16",
        "--out",
        "out",
        "--json",
    ]
    # When `catalogan generate` runs in each with the same seed
    results = [_generate(folder, *args) for folder in (first, second)]
    # Then both jobs succeed with 65 images, and every exported file is byte-identical
    summaries = []
    for result in results:
        assert result.returncode == 0, result.stderr
        summaries.append(json.loads(result.stdout))
    assert summaries[0]["status"] == "succeeded" and summaries[0]["images_done"] == 65
    assert summaries[0]["job_id"] == summaries[1]["job_id"]
    files = [_files(folder / "out") for folder in (first, second)]
    assert files[0] == files[1]
    assert sum(name.endswith(".png") and not name.startswith("contact-sheets") for name in files[0]) == 65
    assert {"contact-sheets/a.png", "contact-sheets/c.png", "manifest.jsonl", "manifest.parquet"} <= set(
        files[0]
    )
    assert "a/00000000.png" in files[0] and "c/00000064.png" in files[0]
    # And the worker it started logged JSON lines with the job, chunk and attempt ids
    log_lines = (first / "catalogan-data" / "logs" / "worker.log").read_text().splitlines()
    claimed = [json.loads(line) for line in log_lines if '"chunk claimed' in line]
    assert claimed and {"job_id", "chunk_id", "attempt"} <= set(claimed[0])


def test_generate_rejects_an_unknown_category_in_one_line(tmp_path: Path) -> None:
    # Given an embedded installation with the tiny model (categories a, b, c)
    folder = _embedded_folder(tmp_path)
    # When a category the model does not know is asked for
    result = _generate(folder, "--category", "sofa=3", "--out", "out")
    # Then the command fails with one line naming the field and the rule, and a usage exit code
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --category sofa=3: category: 'sofa' is not a category of model tiny@1 (one of: a, b, c)"
    ]


@pytest.mark.integration
def test_generate_uses_postgresql_redis_and_s3_when_configured(
    pg_url: str, redis_url: str, s3_store: ObjectStore, s3_env: dict[str, str], tmp_path: Path
) -> None:
    # Given CATALOGAN_* settings that point at PostgreSQL, Redis and S3, with the tiny model registered there
    engine = make_engine(pg_url)
    make_model_version(make_session_factory(engine), checkpoint=tiny_checkpoint(), store=s3_store)
    env = pipeline_env(
        CATALOGAN_DATABASE_URL=pg_url,
        CATALOGAN_BROKER_URL=redis_url,
        CATALOGAN_STORAGE_URL=s3_store.url,
        CATALOGAN_DATA_DIR=str(tmp_path / "data"),
        **s3_env,
    )
    # When `catalogan generate` runs
    command = [
        *CATALOGAN,
        "generate",
        "--model",
        "tiny@1",
        "--category",
        "b=20",
        "--seed",
        "1",
        "--out",
        "out",
        "--json",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # Then the job ran on those services: its rows are in PostgreSQL and its objects in S3
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded" and summary["exported_images"] == 20
    with make_session_factory(engine)() as session:
        job = session.get(Job, summary["job_id"])
        assert job is not None and job.images_done == 20
        keys = [info.key for info in s3_store.list(f"{job.tenant_id}/jobs/{job.id}/b/")]
    assert len(keys) == 20
    assert not (tmp_path / "data" / "catalogan.db").exists()  # no embedded SQLite was used
    engine.dispose()


def _children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_stops_generate_and_the_worker_and_beat_it_started(tmp_path: Path) -> None:
    """`kill PID` (or `timeout`) on `catalogan generate` left its worker and beat running, orphaned, still
    generating: SIGTERM now ends the command through its clean-up, which stops both."""
    import signal
    import time

    process, children = _generate_with_children(tmp_path)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, [pid for pid in children if Path(f"/proc/{pid}").exists()]
        time.sleep(0.5)


def _generate_with_children(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`catalogan generate` of a long job on the embedded default, once its worker and beat run (and 2 s on)."""
    import time

    folder = _embedded_folder(tmp_path)
    command = [*CATALOGAN, "generate", "--model", "tiny", "--category", "a=20000", "--out", "out"]
    process = subprocess.Popen(
        command, cwd=folder, env=pipeline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    children: list[int] = []
    while len(children) < 2:  # the worker and the beat have started
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.5)
        children = _children_of(process.pid)
    time.sleep(2.0)
    return process, children


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_9_of_generate_takes_the_worker_and_beat_it_started_with_it(tmp_path: Path) -> None:
    """Given `catalogan generate` running a job with the worker and beat it started / When it is killed with
    SIGKILL (no clean-up runs) / Then both children end within seconds: they get SIGTERM when it dies
    (PR_SET_PDEATHSIG). They lived on, reparented to PID 1, and a rerun started a second beat."""
    import signal
    import time

    process, children = _generate_with_children(tmp_path)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 45  # the worker finishes the batch in flight and releases its chunk
    while any(_running(pid) for pid in children):
        assert time.monotonic() < deadline, [pid for pid in children if _running(pid)]
        time.sleep(0.5)


def test_piped_generate_prints_the_summary_as_its_first_line(tmp_path: Path) -> None:
    """Given stdout is a pipe (`catalogan generate ... | head -1`) / When generate runs / Then the first line on
    stdout is the summary, `job ...`: the progress bar is on stderr, and off when stderr is not a terminal (it
    wrote an empty line to stdout first)."""
    folder = _embedded_folder(tmp_path)
    result = _generate(folder, "--category", "a=2", "--seed", "3", "--out", "out")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("job "), result.stdout
