"""`catalogan jobs submit --truncation / --variation-of / --interpolate` and `jobs show` against a live API on
real PostgreSQL: generate's options and rules on the API-only CLI, a source named by JOB/INDEX or by the
delivered PNG (read locally, never uploaded), and every refusal one line naming the option as typed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import ImageStatus, JobStatus
from db.tables import Chunk, Image, Job, utcnow
from tests.scheduler.test_cli_jobs_scripting import LiveApi, live_api, one_error_line, run
from tests.scheduler.test_latent_control_api import _png

__all__ = ["live_api"]  # the fixture, imported for the tests below

CONTROL_OPTIONS = ("--truncation", "--variation-of", "--strength", "--count", "--interpolate", "--frames")


def deliver(live_api: LiveApi, pg_factory: sessionmaker[Session], count: int = 3) -> str:
    """A job of `count` images of category b, submitted over HTTP, then delivered and succeeded (each image row
    with the sha256 of its file, `_png`) as workers and the finalize step would; its id."""
    job_id = live_api.submit("b")
    with transaction(pg_factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(images_total=count))
        chunk = session.scalars(select(Chunk).where(Chunk.job_id == job_id)).one()
        session.add_all(
            Image(
                job_id=job_id,
                chunk_id=chunk.id,
                index=index,
                category="b",
                status=ImageStatus.SUCCEEDED,
                redraws=0,
                attempt=1,
                key=f"k/{index}",
                sha256=hashlib.sha256(_png(job_id, index, "b")).hexdigest(),
            )
            for index in range(count)
        )
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.SUCCEEDED, finished_at=utcnow(), images_done=count)
        )
    return job_id


def jobs_count(pg_factory: sessionmaker[Session]) -> int:
    """Job rows in the database."""
    with pg_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_jobs_submit_documents_generates_control_options() -> None:
    """Given `catalogan jobs submit --help` / Then it offers generate's creative-control options by their names."""
    result = run(["jobs", "submit", "--help"], {})
    assert result.exit_code == 0, result.output
    assert all(option in result.output for option in CONTROL_OPTIONS), result.output


def test_variations_and_frames_are_submitted_by_job_index_or_by_file_and_shown(
    live_api: LiveApi, pg_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Given a delivered job and the PNG of its image 1 / When `jobs submit` asks for variations of the file
    with ψ 0.9, and for frames from JOB/0 to the file / Then each job is created from that image, and `jobs
    show` (and its --json) shows its ψ, source and strength, or its ends and frames."""
    source = deliver(live_api, pg_factory)
    png = tmp_path / "b.png"
    png.write_bytes(_png(source, 1, "b"))
    args = ["jobs", "submit", "--variation-of", str(png), "--strength", "0.3", "--count", "4"]
    varied = run([*args, "--truncation", "0.9", "--seed", "5"], live_api.env)
    assert varied.exit_code == 0, varied.output
    framed = run(
        ["jobs", "submit", "--interpolate", f"{source}/0", str(png), "--frames", "5", "--json"], live_api.env
    )
    assert framed.exit_code == 0, framed.output
    framed_job = json.loads(framed.stdout)
    assert framed_job["interpolation"] == {
        "start": {"job_id": source, "index": 0},
        "end": {"job_id": source, "index": 1},
        "frames": 5,
    }
    shown = run(["jobs", "show", varied.stdout.strip()], live_api.env)
    assert shown.exit_code == 0, shown.output
    assert "truncation: 0.9" in shown.stdout
    assert f"variation: of {source}/1, strength 0.3, count 4" in shown.stdout
    as_json = json.loads(run(["jobs", "show", varied.stdout.strip(), "--json"], live_api.env).stdout)
    assert (as_json["truncation"], as_json["variation"]["source"]) == (0.9, {"job_id": source, "index": 1})
    shown = run(["jobs", "show", framed_job["id"]], live_api.env)
    assert f"interpolate: {source}/0 .. {source}/1, 5 frames" in shown.stdout
    assert "truncation" not in shown.stdout and jobs_count(pg_factory) == 3


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--variation-of", "abc/²", "--strength", "0.5", "--count", "2"], "--variation-of 'abc/²': must be"),
        (["--variation-of", "abc/٣", "--strength", "0.5", "--count", "2"], "--variation-of 'abc/٣': must be"),
        (["--category", "a=1", "--strength", "0.5"], "--strength: only with --variation-of"),
        (["--variation-of", "{job}/1", "--strength", "0.5"], "--count: required with --variation-of"),
        (["--interpolate", "{job}/0", "{job}/1"], "--frames: required with --interpolate"),
        (
            ["--category", "a=1", "--variation-of", "{job}/1", "--strength", "0", "--count", "2"],
            "--category: not with --variation-of",
        ),
        (
            ["--truncation", "0.8", "--interpolate", "{job}/0", "{job}/1", "--frames", "3"],
            "--truncation: not with --interpolate",
        ),
        (["--seed", "3"], "--category: give CATEGORY=COUNT, or --variation-of / --interpolate"),
        (
            ["--variation-of", "{missing}", "--strength", "0.5", "--count", "2"],
            "--variation-of 'missing.png': no",
        ),
        # The API's 422s, named as typed rather than by the API's fields.
        (["--category", "a=1", "--truncation", "0.2"], "--truncation 0.2: "),
        (["--variation-of", "{job}/7", "--strength", "0.5", "--count", "2"], "--variation-of '{job}/7': no "),
        (
            ["--variation-of", "{job}/999999999", "--strength", "0.5", "--count", "2"],
            "--variation-of '{job}/999999999': ",
        ),
        (["--variation-of", "{job}/1", "--strength", "1.5", "--count", "2"], "--strength 1.5: "),
        (["--variation-of", "{job}/1", "--strength", "0.5", "--count", "0"], "--count 0: "),
        (["--interpolate", "{job}/0", "{job}/9", "--frames", "3"], "--interpolate '{job}/9': no delivered"),
        (
            ["--variation-of", "{edited}", "--strength", "0.5", "--count", "2"],
            "--variation-of '{edited}': the file is not image 1 of job {job}",
        ),
    ],
    ids=[
        "superscript-index",
        "arabic-indic-index",
        "strength-alone",
        "variation-without-count",
        "interpolate-without-frames",
        "category-with-variation",
        "truncation-with-interpolate",
        "no-images",
        "missing-file",
        "truncation-out-of-range",
        "no-such-image",
        "index-out-of-range",
        "strength-out-of-range",
        "count-zero",
        "interpolate-no-such-end",
        "edited-copy",
    ],
)
def test_bad_control_input_is_one_line_naming_the_option_as_typed_and_submits_nothing(
    live_api: LiveApi, pg_factory: sessionmaker[Session], tmp_path: Path, args: list[str], line: str
) -> None:
    """Given a control option that breaks a rule (generate's combinations, a source that is no JOB/INDEX of
    ASCII digits or no image of the tenant, an edited copy of a delivered file, a value out of its range) /
    When `jobs submit` runs / Then exit 2, one `Error:` line naming the option and the value as typed, and no
    job is created."""
    job = deliver(live_api, pg_factory)
    edited = tmp_path / "edited.png"
    edited.write_bytes(_png(job, 1, "b") + b"\0")  # one byte after IEND: still a PNG naming image 1
    values = {"job": job, "edited": str(edited), "missing": "missing.png"}
    args = [arg.format(**values) for arg in args]
    before = jobs_count(pg_factory)
    result = run(["jobs", "submit", *args], live_api.env)
    assert result.exit_code == 2, result.output
    assert one_error_line(result).startswith(f"Error: {line.format(**values)}"), result.output
    assert jobs_count(pg_factory) == before
