"""The per-process generator cache: loads once per model version, refuses bytes the registry did not record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest

from db.storage import ObjectStore
from workers.errors import CheckpointMismatchError
from workers.generator_cache import GeneratorCache


@dataclass
class _Version:
    id: int
    checkpoint_uri: str
    checkpoint_sha256: str


class _Loaded:
    categories = ("a",)
    z_dim = 2
    checkpoint_sha256 = ""

    def generate(self, class_indices: Any, latents: Any) -> Any:
        return None


def test_a_checkpoint_is_loaded_once_per_model_version(memory_store: ObjectStore) -> None:
    """Given a registered checkpoint, when two chunks ask for it, then it is read and loaded once."""
    memory_store.put("models/m/1/generator.pt", b"weights")
    loads: list[bytes] = []
    cache = GeneratorCache(
        memory_store, device="cpu", loader=lambda data, device: loads.append(data) or _Loaded()
    )
    version = _Version(1, "models/m/1/generator.pt", hashlib.sha256(b"weights").hexdigest())

    first, second = cache.get(version), cache.get(version)

    assert first is second
    assert loads == [b"weights"]


def test_a_checkpoint_whose_bytes_changed_after_registration_is_refused(memory_store: ObjectStore) -> None:
    """Given a model version whose checkpoint was overwritten after registration, when a worker loads it,
    then it refuses (images would carry a sha256 that is not the one they came from) and loads nothing."""
    memory_store.put("models/m/1/generator.pt", b"tampered")
    loads: list[bytes] = []
    cache = GeneratorCache(
        memory_store, device="cpu", loader=lambda data, device: loads.append(data) or _Loaded()
    )
    version = _Version(1, "models/m/1/generator.pt", hashlib.sha256(b"weights").hexdigest())

    with pytest.raises(CheckpointMismatchError, match="registry says"):
        cache.get(version)
    assert loads == []
