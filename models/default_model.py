"""The shipped default model: register `models/weights/fashion-cgan/` on first use, so generation works on a
fresh machine without training.

`ensure_default_model` copies the shipped EMA generator into the object store (same bytes → same key, so
re-running is harmless) and inserts its `model_versions` row as production when no row with its sha256
exists. A package that ships new generator bytes (a better model) registers them as the next version of
`fashion-cgan`, under a key named after their sha256, and as a candidate when another version is in
production: the operator promotes it (`catalogan models promote fashion-cgan@N`), and the versions before it
keep their bytes, so their images still verify. (The first shipped version was stored at the fixed key
`models/fashion-cgan/shipped/generator.pt`; rows that point there keep it.) Registrations are serialised
(a transaction-scoped advisory lock on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers), so
whoever comes second finds the first one's row. Should an insert still collide on `name@version` (a
concurrent `catalogan train` of the same name), it is retried.

It then gives the row what `catalogan train` gives a finished run: a memorization index (the workers'
near-copy check, `models.memorization_index`) of the model's training data, the 60,000 Fashion-MNIST
train images from the locally installed dataset (Debian's `dataset-fashion-mnist`), embedded with the
shipped evaluator and calibrated on the 10,000 test images. A 60,000 × 128 float32 index is ~30 MB, too
big for git, so it is built here, once per registry: about a minute of CPU (see docs/evaluation.md).
The object is stored next to the generator under a name that carries its sha256, so two processes that
build it at once can never leave a row pointing at the other one's bytes; the row records it like a
trained version's (`metrics["memorization_index"]`). Without the dataset, or with other data than the
model's `data_fingerprint`, the model is registered without an index and the caller is told so; a later
call attaches it (also to rows registered before this existed). Registration never fails for want of it.
torch is imported only to build the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import ConflictError
from db.model_versions import create_model_version, find_production, set_metrics
from db.status import ModelVersionStatus
from db.storage.base import ObjectStore
from db.tables import ModelVersion
from models.data.fashion_mnist import DEFAULT_ROOT, FILES, fingerprint
from models.errors import CheckpointError, DataError
from models.memorization_index import GATE_QUANTILE, METRICS_KEY, index_metrics

DEFAULT_MODEL_NAME = "fashion-cgan"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights" / DEFAULT_MODEL_NAME
SHIPPED_CHECKPOINT = SHIPPED_DIR / "generator.pt"
SHIPPED_SHA256 = SHIPPED_DIR / "generator.sha256"
SHIPPED_METADATA = SHIPPED_DIR / "metadata.json"
STORE_PREFIX = f"models/{DEFAULT_MODEL_NAME}/shipped"
INDEX_KEY_PREFIX = f"{STORE_PREFIX}/memorization-index-"  # + the first 16 hex digits of its sha256 + ".npz"
INSERT_ATTEMPTS = 3
# PostgreSQL advisory-lock key serialising registrations of the shipped model (any fixed 63-bit number).
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"catalogan:default-model").digest()[:8], "big") >> 1
# Threads of one process build the index once: the others wait and find it recorded.
_INDEX_LOCK = threading.Lock()

logger = logging.getLogger(__name__)
Notify = Callable[[str], None]


@dataclass(frozen=True)
class ShippedIndexSpec:
    """Where and how `ensure_default_model` builds the shipped model's memorization index."""

    data_root: Path = DEFAULT_ROOT  # Fashion-MNIST IDX files (Debian's dataset-fashion-mnist)
    every: int = 1  # index every n-th image of each split; > 1 only for quick tests
    quantile: float = GATE_QUANTILE  # the threshold's quantile of real test → train distances


FULL_INDEX = ShippedIndexSpec()


def shipped_checkpoint_bytes() -> tuple[bytes, str]:
    """The shipped checkpoint and its sha256, verified against `generator.sha256`; `CheckpointError` if not."""
    try:
        data = SHIPPED_CHECKPOINT.read_bytes()
        expected = SHIPPED_SHA256.read_text().split()[0]
    except OSError as exc:
        raise CheckpointError(f"{SHIPPED_DIR}: the shipped default model is missing ({exc})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{SHIPPED_CHECKPOINT}: sha256 {actual} does not match generator.sha256 ({expected})"
        )
    return data, actual


def shipped_store_key(sha256: str) -> str:
    """The object key of a shipped generator: named after its bytes, so a newer one never replaces an older."""
    return f"{STORE_PREFIX}/generator-{sha256[:16]}.pt"


def shipped_metadata() -> dict[str, Any]:
    """Preset, model config, data fingerprint and metrics of the shipped model (`metadata.json`)."""
    return dict(json.loads(SHIPPED_METADATA.read_text()))


def _find_shipped(session: Session, sha256: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.name == DEFAULT_MODEL_NAME, ModelVersion.checkpoint_sha256 == sha256)
        .order_by(ModelVersion.version)
        .limit(1)
    ).first()


def _lock_registration(session: Session) -> None:
    """Hold the registration lock until the transaction ends (PostgreSQL; a no-op elsewhere)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


def ensure_default_model(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    *,
    index: ShippedIndexSpec | None = FULL_INDEX,
    notify: Notify | None = None,
) -> ModelVersion:
    """Register the shipped `fashion-cgan` generator (object store + registry row), once; return its row.

    It becomes the production version unless another version of the name is already in production. With
    `index` (the default: all of Fashion-MNIST) the row also gets its memorization index, built if it has
    none yet; `None` registers the generator alone. `notify` receives the one-line messages a person
    should see (building the index, its cost, or why there is none); they are logged as well.
    """
    notify = notify or _no_notify
    data, sha256 = shipped_checkpoint_bytes()
    row, created = _register(session_factory, store, data, sha256)
    if created and row.status is ModelVersionStatus.CANDIDATE:
        notify_warning(
            notify,
            f"the generator shipped in this package is new: registered as {row.name}@{row.version}, a candidate "
            f"beside the version in production; `catalogan models promote {row.name}@{row.version}` makes it "
            "the default (docs/training.md, 'The default model')",
        )
    if index is None or _index_present(store, row):
        return row
    with _INDEX_LOCK:
        with session_factory() as session:
            found = session.get(ModelVersion, row.id)
        if found is not None and _index_present(store, found):
            return found
        entry = _store_index(store, index, notify)
        if entry is None:
            return row
        return _record_index(session_factory, store, row.id, entry)


def _register(
    session_factory: sessionmaker[Session], store: ObjectStore, data: bytes, sha256: str
) -> tuple[ModelVersion, bool]:
    """The shipped generator's row, inserted (and its checkpoint stored) when there is none; True if inserted."""
    with transaction(session_factory) as session:
        found = _find_shipped(session, sha256)
    if found is not None:
        key = _key_in_store(store, found.checkpoint_uri)
        if key is not None and not store.exists(key):
            store.put(key, data)
        return found, False
    key = shipped_store_key(sha256)
    store.put(key, data)  # before the row, so a row never points at a missing object
    metadata = shipped_metadata()
    for _ in range(INSERT_ATTEMPTS):
        try:
            with transaction(session_factory) as session:
                _lock_registration(session)
                found = _find_shipped(session, sha256)
                if found is not None:
                    return found, False
                in_production = find_production(session, DEFAULT_MODEL_NAME) is not None
                created = create_model_version(
                    session,
                    name=DEFAULT_MODEL_NAME,
                    preset=str(metadata.get("preset", DEFAULT_MODEL_NAME)),
                    architecture=str(metadata.get("model_config", {}).get("architecture", "")),
                    config=metadata.get("model_config", {}),
                    categories=metadata.get("model_config", {}).get("categories", []),
                    checkpoint_uri=store.uri(key),
                    checkpoint_sha256=sha256,
                    data_fingerprint=str(metadata.get("data_fingerprint", "")),
                    metrics=metadata.get("metrics", {}),
                    status=ModelVersionStatus.CANDIDATE if in_production else ModelVersionStatus.PRODUCTION,
                )
            return created, True
        except ConflictError:
            continue  # another process inserted this name@version first: look again
    with transaction(session_factory) as session:
        found = _find_shipped(session, sha256)
    if found is None:
        raise ConflictError(
            f"could not register the shipped {DEFAULT_MODEL_NAME} model after {INSERT_ATTEMPTS} attempts"
        )
    return found, False


def _no_notify(message: str) -> None:
    """The default `notify`: the message is logged only."""


def _key_in_store(store: ObjectStore, uri: str) -> str | None:
    """The key of `uri` in `store`, or None when it names another store."""
    base = store.url.rstrip("/") + "/"
    return uri[len(base) :] if uri.startswith(base) else None


def _index_present(store: ObjectStore, row: ModelVersion) -> bool:
    """True when the row records an index whose object is there (or lives in a store we cannot check)."""
    entry = (row.metrics or {}).get(METRICS_KEY)
    if not entry:
        return False
    key = _key_in_store(store, str(entry.get("uri", "")))
    return key is None or store.exists(key)


def missing_training_data(root: Path) -> str | None:
    """Why the shipped model's training data cannot be indexed from `root`, or None when it can."""
    absent = [name for names in FILES.values() for name in names if not (root / name).is_file()]
    if absent:
        return (
            f"Fashion-MNIST is not installed at {root} (no {absent[0]}; on Debian/Ubuntu: "
            "apt-get install dataset-fashion-mnist)"
        )
    expected = str(shipped_metadata().get("data_fingerprint", ""))
    try:
        actual = fingerprint(root)
    except DataError as exc:
        return f"the Fashion-MNIST files at {root} are unreadable ({exc})"
    if expected and actual != expected:
        return f"the Fashion-MNIST at {root} ({actual}) is not the data the model was trained on ({expected})"
    return None


def _store_index(store: ObjectStore, spec: ShippedIndexSpec, notify: Notify) -> dict[str, Any] | None:
    """Build the index from the local dataset and store it; its metrics entry, or None (and why) without data."""
    problem = missing_training_data(spec.data_root)
    built = None
    started = time.monotonic()
    if problem is None:
        notify_info(
            notify,
            f"{DEFAULT_MODEL_NAME}: building its memorization index from Fashion-MNIST at {spec.data_root} "
            "(once per registry; about a minute or more on a CPU)",
        )
        from models.memorization_index import build_fashion_mnist_index

        try:
            built = build_fashion_mnist_index(spec.data_root, every=spec.every, quantile=spec.quantile)
        except DataError as exc:
            problem = f"the Fashion-MNIST files at {spec.data_root} are unreadable ({exc})"
    if built is None:
        message = (
            f"{DEFAULT_MODEL_NAME}: {problem}, so it is registered without a memorization index and its jobs "
            "skip the near-copy check; run again once the data is there to attach one"
        )
        notify_warning(notify, message)
        return None
    payload = built.to_bytes()
    key = f"{INDEX_KEY_PREFIX}{hashlib.sha256(payload).hexdigest()[:16]}.npz"
    store.put(key, payload, content_type="application/octet-stream")
    notify_info(
        notify,
        f"{DEFAULT_MODEL_NAME}: memorization index stored ({len(built.train_features):,} training images, "
        f"{len(payload) / 1e6:.1f} MB, threshold {built.threshold:.3f}, {time.monotonic() - started:.0f} s)",
    )
    return index_metrics(built, store.uri(key), payload)


def notify_warning(notify: Notify, message: str) -> None:
    """A message a person must see: a WARNING when nobody is told, else passed to `notify` (logged at INFO)."""
    if notify is _no_notify:
        logger.warning(message)  # nobody else is told
    else:
        # The caller shows it; at INFO, Python's last-resort handler does not print it a second time.
        notify_info(notify, message)


def notify_info(notify: Notify, message: str) -> None:
    """Log `message` at INFO and pass it to `notify`."""
    logger.info(message)
    notify(message)


def _record_index(
    session_factory: sessionmaker[Session], store: ObjectStore, row_id: int, entry: dict[str, Any]
) -> ModelVersion:
    """Record `entry` in the row unless another process recorded a usable index first (then drop ours)."""
    with transaction(session_factory) as session:
        _lock_registration(session)
        row = session.get(ModelVersion, row_id)
        if row is None:
            raise ConflictError(f"model version {row_id} disappeared while its memorization index was built")
        if _index_present(store, row):
            ours = _key_in_store(store, str(entry["uri"]))
            if ours is not None and row.metrics[METRICS_KEY].get("uri") != entry["uri"]:
                store.delete(ours)  # a different object under its own digest: nobody points at it
            return row
        return set_metrics(session, row, {METRICS_KEY: entry})
