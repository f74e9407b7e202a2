"""`JobExport`: the export of `catalogan generate` follows the job chunk by chunk, then finishes the folder."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import image_key, manifest_keys
from db.status import ChunkStatus, ImageStatus
from db.storage import LocalStore, MemoryStore, ObjectStore
from db.tables import Chunk, Image, Job
from tests.db.factories import JobRows, insert_job
from workers.errors import ExportFolderError
from workers.export import (
    EXPORT_MARKER_NAME,
    JobExport,
    PreviousExport,
    check_output_folder,
    check_replaceable,
    read_export_marker,
    remove_export,
)


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((28, 28), shade, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _finish_chunk(factory: sessionmaker[Session], store: ObjectStore, rows: JobRows, position: int) -> None:
    """What a worker leaves when a chunk completes: its objects, its rows and the chunk succeeded."""
    with transaction(factory) as session:
        chunk = session.get_one(Chunk, rows.chunk_ids[position])
        for index in range(chunk.start_index, chunk.stop_index):
            key = image_key(rows.tenant_id, rows.job_id, "Sneaker", index, "png")
            store.put(key, _png(index * 10))
            session.add(
                Image(
                    job_id=rows.job_id,
                    chunk_id=chunk.id,
                    index=index,
                    category="Sneaker",
                    key=key,
                    status=ImageStatus.SUCCEEDED,
                    attempt=1,
                )
            )
        session.execute(update(Chunk).where(Chunk.id == chunk.id).values(status=ChunkStatus.SUCCEEDED))


def test_the_export_copies_each_finished_chunk_while_the_job_runs(
    session_factory: sessionmaker[Session], memory_store: ObjectStore, tmp_path: Path
) -> None:
    # Given a running job of two chunks of 4 whose *second* chunk finished first
    rows = insert_job(session_factory, chunks=2, chunk_size=4)
    with session_factory() as session:
        export = JobExport(memory_store, session.get_one(Job, rows.job_id), tmp_path)
    _finish_chunk(session_factory, memory_store, rows, 1)
    # When the export is polled, then that chunk's 4 images are in the folder already, and only those
    with session_factory() as session:
        assert export.export_finished(session) == 4
        assert export.export_finished(session) == 0  # nothing is copied twice
    assert sorted(path.name for path in (tmp_path / "Sneaker").iterdir()) == [
        f"{i:08d}.png" for i in range(4, 8)
    ]
    # And when the first chunk finishes and the export finishes, every image is there, byte for byte
    _finish_chunk(session_factory, memory_store, rows, 0)
    with session_factory() as session:
        result = export.finish(session)
    assert result.images == 8
    for index in range(8):
        assert (tmp_path / "Sneaker" / f"{index:08d}.png").read_bytes() == _png(index * 10)
    # And the contact sheet shows the images in index order, not in the order the chunks finished
    sheet = PILImage.open(result.contact_sheets[0]).convert("L")
    tile = sheet.width // 8
    first_tile_shade = sheet.getpixel((2 + tile // 2, 2 + tile // 2))
    assert first_tile_shade == 0, "the first tile is image 0"


def _exported_job(
    factory: sessionmaker[Session], store: ObjectStore, folder: Path
) -> tuple[JobRows, dict[str, bytes]]:
    """A finished job of one chunk of 4, exported to `folder`; returns its rows and the folder's files."""
    rows = insert_job(factory, chunks=1, chunk_size=4)
    _finish_chunk(factory, store, rows, 0)
    with factory() as session:
        JobExport(store, session.get_one(Job, rows.job_id), folder).finish(session)
    files = {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }
    return rows, files


def test_the_export_records_every_file_it_wrote_in_its_marker(
    session_factory: sessionmaker[Session], memory_store: ObjectStore, tmp_path: Path
) -> None:
    # Given a finished job exported to a folder
    rows, files = _exported_job(session_factory, memory_store, tmp_path / "out")
    # Then the marker names the job and exactly the other files, sorted (the same bytes whatever the order)
    lines = (tmp_path / "out" / EXPORT_MARKER_NAME).read_text().splitlines()
    assert json.loads(lines[0]) == {"catalogan_export": 1, "job_id": rows.job_id}
    recorded = [json.loads(line) for line in lines[1:]]
    assert recorded == sorted(set(files) - {EXPORT_MARKER_NAME})
    assert {"Sneaker/00000000.png", "contact-sheets/Sneaker.png"} <= set(recorded)
    # And the folder is this job's export, with nothing else in it
    assert check_output_folder(tmp_path / "out") == PreviousExport(rows.job_id, frozenset(recorded))


def test_a_folder_with_files_no_export_recorded_is_refused(
    session_factory: sessionmaker[Session], memory_store: ObjectStore, tmp_path: Path
) -> None:
    # Given a folder of the user's, and an export with a user's file added next to its images
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    _exported_job(session_factory, memory_store, tmp_path / "out")
    (tmp_path / "out" / "Sneaker" / "keep.png").write_bytes(b"mine")
    # When each is checked as --out, then each is refused with one message naming --out and the file
    with pytest.raises(ExportFolderError, match=r"^--out .*not a catalogan export.*'notes.txt'"):
        check_output_folder(tmp_path / "mine")
    with pytest.raises(ExportFolderError, match=r"^--out .*'Sneaker/keep.png'.*no catalogan export wrote"):
        check_output_folder(tmp_path / "out")
    # And a missing folder, or one holding only empty folders, is no export and no problem
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert (
        check_output_folder(tmp_path / "nothing") is None and check_output_folder(tmp_path / "empty") is None
    )


def test_another_jobs_export_is_replaced_only_when_asked_and_only_its_files_go(
    session_factory: sessionmaker[Session], memory_store: ObjectStore, tmp_path: Path
) -> None:
    # Given a folder holding a job's export, and a user's empty folder beside it
    out = tmp_path / "out"
    rows, files = _exported_job(session_factory, memory_store, out)
    (out / "later").mkdir()
    previous = check_output_folder(out)
    assert previous is not None
    # When another job wants the folder: refused without overwrite, naming the job and --overwrite
    with pytest.raises(ExportFolderError, match=rf"^--out .*job {rows.job_id}: add --overwrite"):
        check_replaceable(out, previous, job_id="another", overwrite=False)
    check_replaceable(out, previous, job_id=rows.job_id, overwrite=False)  # the same job: exported again
    check_replaceable(out, previous, job_id="another", overwrite=True)
    # And removing it removes the recorded files, the folders they leave empty, and the marker: nothing else
    assert remove_export(out, previous) == len(files) - 1
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*")) == ["later"]


def test_the_export_never_writes_into_another_jobs_export(
    session_factory: sessionmaker[Session], memory_store: ObjectStore, tmp_path: Path
) -> None:
    # Given a folder holding a job's export
    _, files = _exported_job(session_factory, memory_store, tmp_path / "out")
    # When a second job is exported there without removing the first, then it refuses before writing a file
    with pytest.raises(ExportFolderError, match="holds the export of job"):
        _exported_job(session_factory, memory_store, tmp_path / "out")
    assert {
        path.relative_to(tmp_path / "out").as_posix()
        for path in (tmp_path / "out").rglob("*")
        if path.is_file()
    } == set(files)


def test_a_marker_that_names_a_path_outside_its_folder_is_not_trusted(tmp_path: Path) -> None:
    # Given a marker whose lines name ../victim.txt (edited, or not written by catalogan)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim.txt").write_text("keep")
    lines = [json.dumps({"catalogan_export": 1, "job_id": "j"}), json.dumps("../victim.txt")]
    (out / EXPORT_MARKER_NAME).write_text("\n".join(lines) + "\n")
    # Then it is no export: the folder is refused as the user's, and nothing outside it can be removed
    assert read_export_marker(out) is None
    with pytest.raises(ExportFolderError, match="not a catalogan export"):
        check_output_folder(out)
    assert (tmp_path / "victim.txt").read_text() == "keep"
    # And a recorded path through a linked folder is not followed when an export is removed
    (out / "link").symlink_to(tmp_path)
    assert remove_export(out, PreviousExport("j", frozenset({"link/victim.txt"}))) == 0
    assert (tmp_path / "victim.txt").read_text() == "keep"


def test_an_interrupted_export_of_the_same_job_is_resumed_into_one_marker(
    session_factory: sessionmaker[Session], memory_store: ObjectStore, tmp_path: Path
) -> None:
    # Given an export cut short after its first chunk, its last marker line torn by the kill
    out = tmp_path / "out"
    rows = insert_job(session_factory, chunks=2, chunk_size=4)
    _finish_chunk(session_factory, memory_store, rows, 0)
    with session_factory() as session:
        JobExport(memory_store, session.get_one(Job, rows.job_id), out).export_finished(session)
    with (out / EXPORT_MARKER_NAME).open("a") as marker:
        marker.write('"Sneaker/000000')
    previous = check_output_folder(out)
    assert previous is not None and len(previous.files) == 4
    # When the same job is exported again to the folder and finishes
    _finish_chunk(session_factory, memory_store, rows, 1)
    with session_factory() as session:
        JobExport(memory_store, session.get_one(Job, rows.job_id), out).finish(session)
    # Then the marker records every file once, sorted, without the torn line
    finished = check_output_folder(out)
    assert finished is not None and finished.job_id == rows.job_id
    assert {f"Sneaker/{index:08d}.png" for index in range(8)} <= finished.files
    recorded = [json.loads(line) for line in (out / EXPORT_MARKER_NAME).read_text().splitlines()[1:]]
    assert recorded == sorted(finished.files)


class WriteDuringReads(MemoryStore):
    """The memory store, trying one write to the SQLite database from another connection while it is read."""

    def __init__(self, database: str) -> None:
        super().__init__()
        self.database = database
        self.writes: list[str] = []

    def get_many(self, keys: Sequence[str], *, in_flight: int = 8) -> Iterator[tuple[str, bytes]]:
        """Write once from another connection (waiting at most 0.5 s), then read."""
        other = sqlite3.connect(self.database, timeout=0.5)
        try:
            other.execute("UPDATE tenants SET name = name || '-x'")
            other.commit()
            self.writes.append("ok")
        except sqlite3.OperationalError as exc:
            self.writes.append(str(exc))
        finally:
            other.close()
        yield from super().get_many(keys, in_flight=in_flight)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_export_holds_no_lock_while_it_reads_the_store(
    session_factory: sessionmaker[Session], db_url: str, tmp_path: Path
) -> None:
    """Embedded (SQLite), an ordinary session's transaction holds the one write lock: the export ends it once it
    has the keys, so a worker's commit never waits for the store reads and file writes (it waited on the busy
    timeout before: "database is locked")."""
    store = WriteDuringReads(db_url.split("///", 1)[1])
    rows = insert_job(session_factory, chunks=1, chunk_size=4)
    _finish_chunk(session_factory, store, rows, 0)
    with session_factory() as session:
        export = JobExport(store, session.get_one(Job, rows.job_id), tmp_path / "out")
        assert export.export_finished(session) == 4
    assert store.writes == ["ok"]


def test_the_export_copies_the_manifests_a_piece_at_a_time(
    session_factory: sessionmaker[Session], local_store: LocalStore, tmp_path: Path
) -> None:
    """Given a finished job whose stored manifest spans several pieces, the export streams it into the
    folder (a million-image job's JSONL is about 300 MB): the whole object is never read at once."""

    class PiecesOnly(LocalStore):
        def get(self, key: str) -> bytes:
            assert not key.endswith(("manifest.jsonl", "manifest.parquet")), "a manifest was read whole"
            return super().get(key)

    store = PiecesOnly(local_store.root)
    rows = insert_job(session_factory, chunks=1, chunk_size=4)
    _finish_chunk(session_factory, store, rows, 0)
    jsonl_key, parquet_key = manifest_keys(rows.tenant_id, rows.job_id)
    manifest = b"".join(b'{"index":%d}\n' % index for index in range(300_000))  # about 4 MiB: 4 pieces
    store.put(jsonl_key, manifest)
    store.put(parquet_key, b"PAR1 parquet bytes")
    folder = tmp_path / "out"
    with session_factory() as session:
        result = JobExport(store, session.get_one(Job, rows.job_id), folder).finish(session)

    assert (folder / "manifest.jsonl").read_bytes() == manifest
    assert (folder / "manifest.parquet").read_bytes() == b"PAR1 parquet bytes"
    assert sorted(path.name for path in result.manifests) == ["manifest.jsonl", "manifest.parquet"]
    assert not list(folder.glob("*.tmp"))
