"""Per-process cache of loaded generators: a model version's checkpoint is read and loaded once per worker.

Model versions are immutable, so a cached generator never goes stale; the cache only bounds memory (LRU).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from db.errors import StorageError
from db.storage import ObjectStore, open_store
from workers.errors import CheckpointMismatchError

logger = logging.getLogger(__name__)


class GeneratorLike(Protocol):
    """What the worker needs from `models.inference.LoadedGenerator`."""

    categories: Any
    z_dim: int
    checkpoint_sha256: str
    # `models.inference.InferenceSpec` (how the pixels are computed); test doubles may lack it, see
    # `workers.pixels.inference_fields`.

    def generate(self, class_indices: Any, latents: Any) -> Any:
        """uint8 images (B, H, W, C) for class indices (B,) and latents (B, z_dim)."""


class ModelVersionRef(Protocol):
    """The fields of a model version row the cache reads."""

    id: int
    checkpoint_uri: str
    checkpoint_sha256: str


Loader = Callable[[bytes, str], GeneratorLike]


def default_loader(data: bytes, device: str, backend: str = "eager", graph: str = "plain") -> GeneratorLike:
    """Load a checkpoint with `models.inference.load_generator` (imported here: it imports torch)."""
    from models.inference import load_generator

    return load_generator(data, device=device, backend=backend, graph=graph)


def spec_loader(data: bytes, device: str, spec: Any) -> GeneratorLike:
    """Load a checkpoint computing exactly as `spec` (a `models.inference.InferenceSpec`) says."""
    from models.inference import load_generator_for

    return load_generator_for(data, spec, device=device)


def read_checkpoint(store: ObjectStore, uri: str) -> bytes:
    """Checkpoint bytes from a URI in `store` (or a key relative to it, or a URI of another store)."""
    base = store.url.rstrip("/") + "/"
    if uri.startswith(base):
        return store.get(uri[len(base) :])
    if "://" not in uri:
        return store.get(uri)
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or "://" not in parent:
        raise StorageError(f"checkpoint {uri!r}: not an object URI")
    return open_store(parent).get(name)


class GeneratorCache:
    """An LRU of loaded generators keyed by model version id; thread-safe."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        device: str,
        max_entries: int = 2,
        loader: Loader | None = None,
        backend: str = "eager",
        graph: str = "plain",
    ) -> None:
        self.store = store
        self.device = device
        self.max_entries = max_entries
        self.backend = backend  # the inference backend of generators loaded without a spec
        self.graph = graph  # and their graph (`models.inference.GRAPHS`)
        self.loader = loader or functools.partial(default_loader, backend=backend, graph=graph)
        self._entries: OrderedDict[tuple[int, Any], GeneratorLike] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_version: ModelVersionRef, spec: Any = None) -> GeneratorLike:
        """The loaded generator of a model version, loading it on first use.

        With `spec` (a `models.inference.InferenceSpec` of this cache's device kind) the generator computes
        exactly as that spec says (`verify --regenerate` of a file made with it); without, the device's default.
        """
        key = (model_version.id, spec)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached
            data = read_checkpoint(self.store, model_version.checkpoint_uri)
            digest = hashlib.sha256(data).hexdigest()
            if model_version.checkpoint_sha256 and digest != model_version.checkpoint_sha256:
                # Images carry the registered sha256 as provenance: generating from other bytes would lie.
                raise CheckpointMismatchError(
                    f"model version {model_version.id}: checkpoint {model_version.checkpoint_uri} has sha256 "
                    f"{digest}, the registry says {model_version.checkpoint_sha256}"
                )
            generator = (
                self.loader(data, self.device) if spec is None else spec_loader(data, self.device, spec)
            )
            self._entries[key] = generator
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            logger.info("loaded model version %s on %s", model_version.id, self.device)
            return generator
