"""The checkpoint format: weights + metadata with a format version, to and from bytes, through the object store.

A checkpoint is a dict saved with `torch.save` and read back with `weights_only=True` (no pickled code):

    format_version  int, CHECKPOINT_FORMAT_VERSION
    kind            "full" (resumable training state), "generator" (G_ema + config: what inference needs) or
                    "trainable" (G, G_ema and D without optimiser state: what `--init-from` needs to go on
                    training with the D that G was trained against, at well under half a full one's size)
    preset          the preset name it was trained with
    model_config    ModelConfig.to_dict();  train_config  TrainConfig.to_dict() (full only)
    step            optimiser steps done
    generator_ema   state dict (both kinds)
    generator, discriminator   state dicts (full and trainable)
    optimizer_g, optimizer_d   state dicts (full only)
    rng             {"torch": ByteTensor, "numpy": {...}, "python": [...]} of the writing process (full only)
    history         {"step": [...], "loss_d": [...], "loss_g": [...]}: the loss curve so far (full only)
    data_fingerprint  str identifying the training data
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from db.storage.base import ObjectStore
from models.errors import CheckpointError, CheckpointFileError

CHECKPOINT_FORMAT_VERSION = 1
FULL = "full"
GENERATOR = "generator"
TRAINABLE = "trainable"
FULL_KEYS = (
    "generator",
    "generator_ema",
    "discriminator",
    "optimizer_g",
    "optimizer_d",
    "rng",
    "train_config",
)
GENERATOR_KEYS = ("generator_ema", "model_config")
TRAINABLE_KEYS = ("generator", "discriminator")
REQUIRED_KEYS = {FULL: FULL_KEYS + GENERATOR_KEYS, TRAINABLE: TRAINABLE_KEYS + GENERATOR_KEYS}


def sha256_hex(data: bytes) -> str:
    """The lowercase hex sha256 of `data` (what the registry and model cards record)."""
    return hashlib.sha256(data).hexdigest()


def checkpoint_to_bytes(payload: dict[str, Any]) -> bytes:
    """Serialise a checkpoint dict (format version added) to bytes.

    Equal payloads give equal bytes, however they were built: strings are interned first, because pickle
    writes a string once per distinct object and refers back to it after, so a state dict loaded from a
    checkpoint (fresh string objects) would otherwise pickle differently from one built in this process.
    """
    buffer = io.BytesIO()
    torch.save(_interned({**payload, "format_version": CHECKPOINT_FORMAT_VERSION}), buffer)
    return buffer.getvalue()


def _interned(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every string interned (tensors and numbers as they are)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        copy = type(value)((_interned(k), _interned(v)) for k, v in value.items())
        for name, attribute in getattr(value, "__dict__", {}).items():  # e.g. a state dict's `_metadata`
            setattr(copy, sys.intern(name), _interned(attribute))
        return copy
    if isinstance(value, list):
        return [_interned(item) for item in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_interned(item) for item in value)
    return value


TORCH_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format (a zip file) since torch 1.6
NOT_A_TORCH_FILE = "not a torch file of tensors and plain values"


def checkpoint_from_bytes(data: bytes) -> dict[str, Any]:
    """Read checkpoint bytes; raise `CheckpointError` (one line) when unreadable, of another version, or
    incomplete."""
    if data and not data.startswith(TORCH_ZIP_MAGIC):
        # torch.save writes a zip archive; anything else goes to torch's legacy loader, whose errors on text or
        # images are whatever its unpickler trips on first (`KeyError: 101` for "hello").
        raise CheckpointError(f"not a catalogan checkpoint (unreadable: {NOT_A_TORCH_FILE})")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors…
        raise CheckpointError(f"not a catalogan checkpoint (unreadable: {_load_failure(exc)})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"not a catalogan checkpoint (a torch file of a {type(payload).__name__})")
    if "format_version" not in payload:
        raise CheckpointError("not a catalogan checkpoint (a torch file without a format_version)")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version!r}; this catalogan reads {CHECKPOINT_FORMAT_VERSION}"
        )
    required = REQUIRED_KEYS.get(str(payload.get("kind")), GENERATOR_KEYS)
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"incomplete {payload.get('kind')!r} checkpoint: missing {', '.join(missing)}")
    return payload


def _load_failure(exc: BaseException) -> str:
    """What torch.load's error says about the bytes, in a few words (its own text runs over several lines,
    and for weights-only loads advises loading the file as arbitrary code)."""
    if isinstance(exc, EOFError):
        return "empty or truncated"
    if isinstance(exc, pickle.UnpicklingError):
        return NOT_A_TORCH_FILE
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].split('. ')[0] if text else ''}".rstrip(": ")


def checkpoint_file_error(name: str, exc: CheckpointError) -> CheckpointFileError:
    """A `CheckpointError` about bytes a person gave as a file, as one bad-input line that names it."""
    # The first line alone: torch's load_state_dict text (weights that do not fit) is a line ending in ':'
    # followed by one line per mismatched tensor.
    text = str(exc).strip().splitlines()
    return CheckpointFileError(f"{name}: {text[0].rstrip(':') if text else 'not a catalogan checkpoint'}")


def read_checkpoint_file(path: Path, name: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """The bytes and checked payload of a checkpoint file a person named; `CheckpointFileError` naming it
    (`name`, default the path) when it cannot be read or is not a catalogan checkpoint."""
    name = name or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointFileError(f"{name}: unreadable ({exc.strerror or exc})") from exc
    try:
        return data, checkpoint_from_bytes(data)
    except CheckpointError as exc:
        raise checkpoint_file_error(name, exc) from exc


GENERATOR_KEEP = (
    "preset",
    "model_config",
    "train_config",
    "step",
    "generator_ema",
    "data_fingerprint",
    "metrics",
)


def generator_only(payload: dict[str, Any]) -> dict[str, Any]:
    """Strip a full checkpoint down to what inference needs: G_ema, configs, step, fingerprint (a few MB)."""
    return {**{key: payload[key] for key in GENERATOR_KEEP if key in payload}, "kind": GENERATOR}


def carries_discriminator(payload: dict[str, Any]) -> bool:
    """True for a checkpoint that holds the D its G was trained against (full or trainable)."""
    return payload.get("kind") in (FULL, TRAINABLE)


def trainable_only(payload: dict[str, Any]) -> dict[str, Any]:
    """Strip a full checkpoint down to G, G_ema and D (no optimiser state, RNG or history).

    What `catalogan train --init-from` needs to go on training a generator with the discriminator it was
    trained against (for fashion-cgan about 24 MB instead of 60), e.g. to bring a GPU run back to another box.
    """
    kept = {key: payload[key] for key in GENERATOR_KEEP + TRAINABLE_KEYS if key in payload}
    return {**kept, "kind": TRAINABLE}


def capture_rng_states() -> dict[str, Any]:
    """The torch, numpy and python RNG states of this process, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [version, list(state), gauss_next],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back RNG states captured by `capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))


def save_checkpoint(store: ObjectStore, key: str, payload: dict[str, Any]) -> str:
    """Write a checkpoint to the object store under `key`; return its URI."""
    store.put(key, checkpoint_to_bytes(payload))
    return store.uri(key)


def load_checkpoint(store: ObjectStore, key: str) -> dict[str, Any]:
    """Read and validate the checkpoint under `key` (raises `ObjectNotFoundError`, `CheckpointError`)."""
    return checkpoint_from_bytes(store.get(key))
