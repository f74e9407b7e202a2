"""The per-image quality gate (`quality_gate: {min_confidence, max_redraws}`) and the memorization gate.

Each image is scored by the project's evaluator CNN (`models.evaluator`) as its softmax probability of the
requested category (the model version's class index). When the model version has a memorization index
(`models.memorization_index`, built at the end of training), an image whose evaluator features sit closer to
a training image than the calibrated threshold is a *near copy* and fails the gate too, whatever its score
(such model versions are gated on every job: `min_confidence` 0 and 3 redraws unless the job says more).
A failed image is redrawn from the latent of (seed, index, redraw) for redraw = 1, 2, … `max_redraws`
(`models.sampling.latents_for(redraws=...)`); an image that still fails after the last redraw is
*rejected*: its row says so (status `rejected`, score, redraws, and the reason) and no object is stored.
Everything is a function of (model version, seed, index, category, gate) and the shipped evaluator on the
CPU, so the same job twice gives the same scores, redraws and rejections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.errors import WorkerConfigError
from workers.generator_cache import GeneratorLike
from workers.pixels import render_pixels

GATE_OPTION = "quality_gate"
DEFAULT_REDRAWS = 3
NEAR_COPY_ERROR = "near copy of a training image (memorization gate)"
LOW_SCORE_ERROR = "below the quality gate's min_confidence after every redraw"


@dataclass(frozen=True, slots=True)
class Scores:
    """A batch's evaluator confidence for the requested category, and which images are near copies."""

    confidence: np.ndarray  # (B,) float64
    near_copy: np.ndarray  # (B,) bool


Scorer = Callable[[np.ndarray, int], Scores]  # (pixels (B, H, W, C) uint8, class index) -> Scores


@dataclass(frozen=True, slots=True)
class GateSettings:
    """A job's quality gate."""

    min_confidence: float
    max_redraws: int


@dataclass(frozen=True, slots=True)
class GatedImage:
    """One image after the gate: its final pixels (None when rejected), score, redraw number and reason."""

    index: int
    pixels: np.ndarray | None
    score: float | None  # None when the job has no gate
    redraws: int
    error: str | None = None

    @property
    def rejected(self) -> bool:
        """True when every draw failed the gate."""
        return self.pixels is None


def gate_settings(options: Mapping[str, Any], *, memorization_index: bool = False) -> GateSettings | None:
    """The gate a job runs under: its `quality_gate` option, a memorization-only gate, or None."""
    gate = options.get(GATE_OPTION)
    if not gate:
        return GateSettings(0.0, DEFAULT_REDRAWS) if memorization_index else None
    try:
        return GateSettings(float(gate["min_confidence"]), int(gate["max_redraws"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkerConfigError(
            f"job option {GATE_OPTION}: {gate!r} is not {{min_confidence, max_redraws}}"
        ) from exc


def evaluator_scorer(index: Any | None = None) -> Scorer:
    """Score with the shipped evaluator (CPU, loaded once per process); near copies from `index` when given."""
    from models.evaluator import default_evaluator, embed

    model = default_evaluator()

    def score(pixels: np.ndarray, class_index: int) -> Scores:
        features, logits = embed(model, pixels)  # (B, 128), (B, 10) float64
        probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        near = index.near_copies(features) if index is not None else np.zeros(len(pixels), dtype=bool)
        return Scores(
            np.asarray(probabilities[:, class_index], dtype=np.float64), np.asarray(near, dtype=bool)
        )

    return score


def apply_gate(
    generator: GeneratorLike,
    scorer: Scorer,
    gate: GateSettings,
    *,
    seed: int,
    class_index: int,
    indices: Sequence[int],
    pixels: np.ndarray,
) -> list[GatedImage]:
    """Score a batch; redraw the images that fail round by round; reject what never passes."""
    current = [np.asarray(row) for row in pixels]
    first = scorer(np.asarray(pixels), class_index)
    scores = [float(value) for value in first.confidence]
    near = [bool(value) for value in first.near_copy]
    redraws = [0] * len(indices)

    def fails(row: int) -> bool:
        return near[row] or scores[row] < gate.min_confidence

    failing = [row for row in range(len(indices)) if fails(row)]
    for redraw in range(1, gate.max_redraws + 1):
        if not failing:
            break
        redrawn = render_pixels(
            generator, seed, class_index, [indices[row] for row in failing], redraws=[redraw] * len(failing)
        )  # (F, H, W, C)
        again = scorer(redrawn, class_index)
        for position, row in enumerate(failing):
            current[row], redraws[row] = redrawn[position], redraw
            scores[row], near[row] = float(again.confidence[position]), bool(again.near_copy[position])
        failing = [row for row in failing if fails(row)]
    rejected = set(failing)
    return [
        GatedImage(index, current[row], scores[row], redraws[row])
        if row not in rejected
        else GatedImage(
            index, None, scores[row], redraws[row], NEAR_COPY_ERROR if near[row] else LOW_SCORE_ERROR
        )
        for row, index in enumerate(indices)
    ]
