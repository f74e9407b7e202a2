"""Conditional accuracy: how often the evaluator recognises the category the generator was asked for."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.errors import InsufficientSamplesError


def conditional_accuracy(logits: np.ndarray, requested: np.ndarray) -> float:
    """The fraction of images whose evaluator top-1 class equals the requested class."""
    logits = np.asarray(logits)
    requested = np.asarray(requested)
    if logits.ndim != 2 or len(logits) != len(requested) or len(requested) == 0:
        raise InsufficientSamplesError(
            f"need logits (N ≥ 1, C) and N requested labels, got {logits.shape} and {requested.shape}"
        )
    return float((logits.argmax(axis=1) == requested).mean())


def per_class_accuracy(logits: np.ndarray, requested: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Conditional accuracy per requested class, keyed by class name; classes with no samples are left out."""
    predicted = np.asarray(logits).argmax(axis=1)
    requested = np.asarray(requested)
    result: dict[str, float] = {}
    for index, name in enumerate(names):
        mask = requested == index
        if mask.any():
            result[name] = float((predicted[mask] == index).mean())
    return result
