"""The shipped default model: registered once, as production, safely under concurrency."""

from __future__ import annotations

import threading

import torch
from sqlalchemy.orm import Session, sessionmaker

from db.status import ModelVersionStatus
from db.storage import LocalStore
from models.default_model import STORE_KEY, ensure_default_model, shipped_checkpoint_bytes
from models.inference import load_generator
from models.registry import get_version, list_versions
from models.sampling import latents_for


def test_the_shipped_model_is_registered_once_as_production(
    session_factory: sessionmaker[Session], local_store: LocalStore
) -> None:
    # Given a fresh database and object store, When eight threads ensure the default model at once
    rows = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            rows.append(ensure_default_model(session_factory, local_store))
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
    assert row.checkpoint_sha256 == sha256 and row.checkpoint_uri == local_store.uri(STORE_KEY)
    assert local_store.get(STORE_KEY) == data
    assert row.data_fingerprint.startswith("sha256:") and len(row.categories) == 10
    # And calling it again changes nothing
    assert ensure_default_model(session_factory, local_store).id == row.id
    assert len(list_versions(session_factory)) == 1


def test_the_shipped_generator_makes_distinct_images_per_category() -> None:
    generator = load_generator(shipped_checkpoint_bytes()[0])
    assert (generator.resolution, generator.channels, generator.z_dim) == (32, 1, 128)
    latent = latents_for(1, [0], generator.z_dim).repeat(10, 1)
    images = generator.generate(torch.arange(10), latent).float()  # (10, 32, 32, 1)
    # Trousers (1) are narrow and bags (8) are wide: the category steers the image
    assert not torch.equal(images[1], images[8])
    assert float((images[1] > 40).float().mean()) < float((images[8] > 40).float().mean())
