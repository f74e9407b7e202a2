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


def test_the_worker_backend_and_a_files_spec_each_get_their_own_generator(memory_store: ObjectStore) -> None:
    # Given a tiny checkpoint and a cache configured for the onnxruntime backend (CATALOGAN_INFERENCE_BACKEND)
    from models.inference import InferenceSpec, random_generator_checkpoint

    checkpoint = random_generator_checkpoint("tiny")
    memory_store.put("models/t/1/generator.pt", checkpoint)
    version = _Version(1, "models/t/1/generator.pt", hashlib.sha256(checkpoint).hexdigest())
    cache = GeneratorCache(memory_store, device="cpu", backend="onnxruntime")
    # When the worker's generator and one for an eager file's spec are asked for
    worker = cache.get(version)
    eager = cache.get(version, InferenceSpec("eager", "cpu", "fp32", 8))
    # Then each computes as asked, and asking again returns the cached one
    assert worker.spec.backend == "onnxruntime" and eager.spec.backend == "eager"  # type: ignore[attr-defined]
    assert cache.get(version) is worker and cache.get(version, InferenceSpec()) is eager
