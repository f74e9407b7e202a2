"""The shipped default model: registered once, as production, safely under concurrency, with the memorization
index of its training data (or, without that data, registered all the same and saying why it has none)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

import models.default_model as default_model
from db.engine import make_engine, make_session_factory
from db.status import ModelVersionStatus
from db.storage import LocalStore
from models.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes
from models.data.fashion_mnist import DEFAULT_ROOT, FILES
from models.default_model import (
    INDEX_KEY_PREFIX,
    ShippedIndexSpec,
    ensure_default_model,
    shipped_checkpoint_bytes,
    shipped_store_key,
)
from models.inference import load_generator
from models.memorization_index import METRICS_KEY, MemorizationIndex
from models.registry import get_version, list_versions
from models.sampling import latents_for

# Every 60th image of each split (1,000 train, 167 test): the real build path, a few seconds on a CPU.
QUICK_INDEX = ShippedIndexSpec(every=60)


@pytest.fixture
def sqlite_session_factory(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on a private SQLite file (the embedded default's database)."""
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def quick_index(fashion_test: tuple[np.ndarray, np.ndarray]) -> ShippedIndexSpec:
    """A small index of the installed Fashion-MNIST (skips without it locally, fails in CI)."""
    return QUICK_INDEX


def test_the_shipped_model_is_registered_once_as_production(
    session_factory: sessionmaker[Session], local_store: LocalStore, quick_index: ShippedIndexSpec
) -> None:
    # Given a fresh database and object store, When eight threads ensure the default model at once
    rows = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            rows.append(ensure_default_model(session_factory, local_store, index=quick_index))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one row exists, in production, and every caller got it
    assert not errors
    versions = list_versions(session_factory, "fashion-cgan")
    assert len(versions) == 1 and versions[0].status is ModelVersionStatus.PRODUCTION
    assert {row.id for row in rows} == {versions[0].id}
    # And "fashion-cgan" resolves to it, its checkpoint is in the store with the recorded sha256
    data, sha256 = shipped_checkpoint_bytes()
    row = get_version(session_factory, "fashion-cgan")
    assert row.checkpoint_sha256 == sha256 and row.checkpoint_uri == local_store.uri(
        shipped_store_key(sha256)
    )
    assert local_store.get(shipped_store_key(sha256)) == data
    assert row.data_fingerprint.startswith("sha256:") and len(row.categories) == 10
    # And its memorization index was built once, stored next to the generator, and recorded in the row
    entry = row.metrics[METRICS_KEY]
    stored = [info.key for info in local_store.list(INDEX_KEY_PREFIX)]
    assert stored == [entry["uri"].removeprefix(local_store.url.rstrip("/") + "/")]
    payload = local_store.get(stored[0])
    assert entry["sha256"] == hashlib.sha256(payload).hexdigest() and entry["train_images"] == 1000
    assert MemorizationIndex.from_bytes(payload).threshold == entry["threshold"] > 0
    # And calling it again changes nothing
    assert ensure_default_model(session_factory, local_store, index=quick_index).metrics == row.metrics
    assert len(list_versions(session_factory)) == 1
    assert len(list(local_store.list(INDEX_KEY_PREFIX))) == 1


def test_without_the_dataset_it_registers_without_an_index_says_so_and_attaches_one_later(
    sqlite_session_factory: sessionmaker[Session],
    local_store: LocalStore,
    quick_index: ShippedIndexSpec,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a machine without Debian's dataset-fashion-mnist
    messages: list[str] = []
    absent = ShippedIndexSpec(data_root=tmp_path / "no-dataset", every=60)
    # When the default model is ensured
    with caplog.at_level(logging.INFO, logger="models.default_model"):
        row = ensure_default_model(sqlite_session_factory, local_store, index=absent, notify=messages.append)
    # Then it is registered as production all the same, without an index, and the caller is told why
    assert row.status is ModelVersionStatus.PRODUCTION and METRICS_KEY not in row.metrics
    assert list(local_store.list(INDEX_KEY_PREFIX)) == []
    assert (
        len(messages) == 1
        and "not installed" in messages[0]
        and "without a memorization index" in messages[0]
    )
    assert messages[0] in caplog.messages  # logged at INFO: the caller already shows it (printed once)
    # When the dataset is there on a later call, Then the same row gets its index
    later = ensure_default_model(
        sqlite_session_factory, local_store, index=quick_index, notify=messages.append
    )
    assert later.id == row.id and later.metrics[METRICS_KEY]["train_images"] == 1000
    assert "memorization index stored" in messages[-1]


def test_other_data_than_the_model_was_trained_on_is_not_indexed(
    sqlite_session_factory: sessionmaker[Session],
    local_store: LocalStore,
    quick_index: ShippedIndexSpec,
    tmp_path: Path,
) -> None:
    # Given a Fashion-MNIST folder whose train files are really the test split (another fingerprint)
    folder = tmp_path / "fashion"
    folder.mkdir()
    for split, source in (("train", "test"), ("test", "test")):
        for name, real in zip(FILES[split], FILES[source], strict=True):
            (folder / name).symlink_to(DEFAULT_ROOT / real)
    messages: list[str] = []
    # When the default model is ensured from it
    row = ensure_default_model(
        sqlite_session_factory, local_store, index=ShippedIndexSpec(data_root=folder), notify=messages.append
    )
    # Then no index is built from the wrong data, and the message says so
    assert METRICS_KEY not in row.metrics and list(local_store.list(INDEX_KEY_PREFIX)) == []
    assert len(messages) == 1 and "is not the data the model was trained on" in messages[0]


def _ship_other_generator(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, str]:
    """Make this package ship other generator bytes (the shipped weights, one of them nudged)."""
    payload = checkpoint_from_bytes(shipped_checkpoint_bytes()[0])
    weights = payload["generator_ema"]
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name] = weights[name] + 1e-3
    data = checkpoint_to_bytes(payload)
    sha256 = hashlib.sha256(data).hexdigest()
    folder.mkdir()
    (folder / "generator.pt").write_bytes(data)
    (folder / "generator.sha256").write_text(f"{sha256}  generator.pt\n")
    monkeypatch.setattr(default_model, "SHIPPED_CHECKPOINT", folder / "generator.pt")
    monkeypatch.setattr(default_model, "SHIPPED_SHA256", folder / "generator.sha256")
    return data, sha256


def test_a_newly_shipped_generator_is_the_next_version_a_candidate_and_leaves_the_old_bytes_alone(
    sqlite_session_factory: sessionmaker[Session],
    local_store: LocalStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a registry where this package's generator is fashion-cgan@1, in production
    first = ensure_default_model(sqlite_session_factory, local_store, index=None)
    old_data, old_sha = shipped_checkpoint_bytes()
    # When a later package ships other bytes and a command ensures the default model twice
    new_data, new_sha = _ship_other_generator(tmp_path / "release", monkeypatch)
    messages: list[str] = []
    second = ensure_default_model(sqlite_session_factory, local_store, index=None, notify=messages.append)
    again = ensure_default_model(sqlite_session_factory, local_store, index=None, notify=messages.append)
    # Then they are fashion-cgan@2, a candidate, stored under their own key, registered once
    assert (second.version, second.status) == (2, ModelVersionStatus.CANDIDATE) and again.id == second.id
    assert second.checkpoint_sha256 == new_sha and second.checkpoint_uri == local_store.uri(
        shipped_store_key(new_sha)
    )
    assert local_store.get(shipped_store_key(new_sha)) == new_data
    # And the operator is told once, with the command that promotes it
    assert (
        len(messages) == 1
        and "fashion-cgan@2" in messages[0]
        and "models promote fashion-cgan@2" in messages[0]
    )
    # And @1 is still production, its object still its own bytes: its images still verify
    assert get_version(sqlite_session_factory, "fashion-cgan").id == first.id
    assert (
        first.checkpoint_uri != second.checkpoint_uri
        and local_store.get(shipped_store_key(old_sha)) == old_data
    )
    assert hashlib.sha256(local_store.get(shipped_store_key(old_sha))).hexdigest() == first.checkpoint_sha256


def test_a_version_at_the_first_release_key_keeps_it_and_gets_its_bytes_back_when_they_are_missing(
    sqlite_session_factory: sessionmaker[Session], local_store: LocalStore
) -> None:
    # Given a registry made before shipped keys carried the sha256: @1 points at the fixed key, whose object
    # was lost
    from db.tables import ModelVersion

    row = ensure_default_model(sqlite_session_factory, local_store, index=None)
    legacy = "models/fashion-cgan/shipped/generator.pt"
    with sqlite_session_factory.begin() as session:
        found = session.get(ModelVersion, row.id)
        assert found is not None
        found.checkpoint_uri = local_store.uri(legacy)
    # When the default model is ensured again
    again = ensure_default_model(sqlite_session_factory, local_store, index=None)
    # Then the row keeps its key and the shipped bytes are put back there
    assert again.id == row.id and again.checkpoint_uri == local_store.uri(legacy)
    assert local_store.get(legacy) == shipped_checkpoint_bytes()[0]
    assert len(list_versions(sqlite_session_factory, "fashion-cgan")) == 1


def test_the_shipped_generator_makes_distinct_images_per_category() -> None:
    generator = load_generator(shipped_checkpoint_bytes()[0])
    assert (generator.resolution, generator.channels, generator.z_dim) == (32, 1, 128)
    latent = latents_for(1, [0], generator.z_dim).repeat(10, 1)
    images = generator.generate(torch.arange(10), latent).float()  # (10, 32, 32, 1)
    # Trousers (1) are narrow and bags (8) are wide: the category steers the image
    assert not torch.equal(images[1], images[8])
    assert float((images[1] > 40).float().mean()) < float((images[8] > 40).float().mean())


def test_when_two_processes_built_the_index_the_first_recorded_one_wins_and_the_other_copy_is_deleted(
    sqlite_session_factory: sessionmaker[Session], local_store: LocalStore
) -> None:
    # Given the default model registered without an index, and two index objects built by two processes
    from models.default_model import _record_index
    from models.memorization_index import index_metrics

    row = ensure_default_model(sqlite_session_factory, local_store, index=None)
    entries = []
    for threshold in (0.25, 0.26):  # two builds whose bytes differ
        built = MemorizationIndex(np.ones((4, 128), dtype=np.float32), threshold, 0.001)
        payload = built.to_bytes()
        key = f"{INDEX_KEY_PREFIX}{hashlib.sha256(payload).hexdigest()[:16]}.npz"
        local_store.put(key, payload)
        entries.append(index_metrics(built, local_store.uri(key), payload))
    # When each records its own, one after the other
    first = _record_index(sqlite_session_factory, local_store, row.id, entries[0])
    second = _record_index(sqlite_session_factory, local_store, row.id, entries[1])
    # Then the row keeps the first, the second process's object is gone, and the row's object is intact
    assert first.metrics[METRICS_KEY] == second.metrics[METRICS_KEY] == entries[0]
    assert [info.key for info in local_store.list(INDEX_KEY_PREFIX)] == [
        entries[0]["uri"].removeprefix(local_store.url.rstrip("/") + "/")
    ]


SHOW_ONCE = """
import sys
from pathlib import Path
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.storage import open_store
from models.default_model import ShippedIndexSpec, ensure_default_model

folder = Path(sys.argv[1])
upgrade(f"sqlite:///{folder / 'db.sqlite'}")
factory = make_session_factory(make_engine(f"sqlite:///{folder / 'db.sqlite'}"))
store = open_store((folder / "objects").as_uri())
spec = ShippedIndexSpec(data_root=folder / "no-dataset")
ensure_default_model(factory, store, index=spec, notify=lambda m: print(m, file=sys.stderr))
"""


def test_the_missing_dataset_message_is_printed_once(tmp_path: Path) -> None:
    """Given a process without logging configured (as `catalogan generate`) and no dataset, when the default model
    is ensured with a notify that prints to stderr, then the message is on stderr exactly once (Python's
    last-resort handler does not print the log record a second time)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", SHOW_ONCE, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("without a memorization index") == 1, result.stderr
