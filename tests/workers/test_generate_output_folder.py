"""`catalogan generate --out` into a folder that is not empty: another job's export is refused unless
`--overwrite`, which removes only the files that export recorded; files no export wrote are never touched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.cli_support import ExitCode
from db.engine import make_engine, make_session_factory
from db.tables import Job
from tests.pipeline import CATALOGAN, pipeline_env
from tests.workers.test_generate_command import _embedded_folder, _files


def _generate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*CATALOGAN, "generate", "--model", "tiny", *args]
    return subprocess.run(command, cwd=cwd, env=pipeline_env(), capture_output=True, text=True, timeout=300)


def _jobs(cwd: Path) -> int:
    engine = make_engine(f"sqlite:///{cwd / 'catalogan-data' / 'catalogan.db'}")
    with make_session_factory(engine)() as session:
        count = int(session.scalar(select(func.count()).select_from(Job)) or 0)
    engine.dispose()
    return count


def _manifest_jobs(folder: Path) -> set[str]:
    """The jobs whose images the folder's manifest lists (keys are `<tenant>/jobs/<job>/...`)."""
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return {json.loads(line)["key"].split("/")[2] for line in lines if line.strip()}


def test_a_folder_with_files_no_export_wrote_is_refused_before_anything_happens(tmp_path: Path) -> None:
    """Given --out holding a user's file in a folder with no data folder yet / When generate runs, even with
    --overwrite / Then one line names --out and the file, exit 2, and nothing was made or touched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        result = _generate(tmp_path, "--category", "a=2", "--out", "out", *extra)
        assert result.returncode == ExitCode.USAGE, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("Error: --out ") and "notes.txt" in line, line
        assert not (tmp_path / "catalogan-data").exists()
        assert _files(out) == {"notes.txt": b"mine"}


@pytest.mark.slow
def test_reusing_out_for_another_job_is_refused_and_overwrite_leaves_only_the_new_jobs_files(
    tmp_path: Path,
) -> None:
    # Given out/ holding the export of a job of categories a and c
    folder = _embedded_folder(tmp_path)
    first = _generate(
        folder, "--category", "a=3", "--category", "c=2", "--seed", "1", "--out", "out", "--json"
    )
    assert first.returncode == 0, first.stderr
    first_job = json.loads(first.stdout)["job_id"]
    before = _files(folder / "out")
    assert "a/00000000.png" in before and "contact-sheets/c.png" in before

    # When another job (category b) is sent to the same folder without --overwrite
    refused = _generate(folder, "--category", "b=2", "--seed", "2", "--out", "out", "--json")
    # Then one line names --out, the job whose export is there and --overwrite; no job was submitted, nothing
    # in the folder changed
    assert refused.returncode == ExitCode.USAGE, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("Error: --out ") and first_job in line and "--overwrite" in line, line
    assert _jobs(folder) == 1
    assert _files(folder / "out") == before

    # When the same command runs again (the same job): it is exported again, without --overwrite
    again = _generate(
        folder, "--category", "a=3", "--category", "c=2", "--seed", "1", "--out", "out", "--json"
    )
    assert again.returncode == 0, again.stderr
    assert _files(folder / "out") == before

    # When the other job runs with --overwrite
    replaced = _generate(folder, "--category", "b=2", "--seed", "2", "--out", "out", "--json", "--overwrite")
    # Then the folder holds that job's files only: no image, contact sheet or manifest line of the first job
    assert replaced.returncode == 0, replaced.stderr
    summary = json.loads(replaced.stdout)
    after = _files(folder / "out")
    assert not any(name.startswith(("a/", "c/", "contact-sheets/a", "contact-sheets/c")) for name in after)
    assert {"b/00000000.png", "b/00000001.png", "contact-sheets/b.png", "manifest.jsonl"} <= set(after)
    assert _manifest_jobs(folder / "out") == {summary["job_id"]}
    assert summary["replaced_export"] == {"job_id": first_job, "files_removed": len(before) - 1}

    # And a file of the user's next to an export is never removed: --overwrite is refused, nothing changes
    (folder / "out" / "b" / "keep.txt").write_text("mine")
    kept = _generate(folder, "--category", "a=1", "--seed", "3", "--out", "out", "--overwrite")
    assert kept.returncode == ExitCode.USAGE, kept.stderr
    (line,) = kept.stderr.strip().splitlines()
    assert line.startswith("Error: --out ") and "b/keep.txt" in line, line
    assert _files(folder / "out") == {**after, "b/keep.txt": b"mine"}
