"""The per-image quality gate (`quality_gate: {min_confidence, max_redraws}`): score, redraw, or reject.

Each image is scored by the project's evaluator CNN (`models.evaluator`) as its softmax probability of the
requested category (the model version's class index). Below `min_confidence` it is redrawn from the latent
of (seed, index, redraw) for redraw = 1, 2, … `max_redraws` (`models.sampling.latents_for(redraws=...)`); an
image still below the threshold after the last redraw is *rejected*: its row says so (status `rejected`,
score, redraws) and no object is stored. Everything is a function of (model version, seed, index, category,
gate) and the shipped evaluator on the CPU, so the same job twice gives the same scores, redraws and
rejections.
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

Scorer = Callable[[np.ndarray, int], np.ndarray]  # (pixels (B, H, W, C) uint8, class index) -> scores (B,)


@dataclass(frozen=True, slots=True)
class GateSettings:
    """A job's quality gate."""

    min_confidence: float
    max_redraws: int


@dataclass(frozen=True, slots=True)
class GatedImage:
    """One image after the gate: its final pixels (None when rejected), score and redraw number."""

    index: int
    pixels: np.ndarray | None
    score: float | None  # None when the job has no gate
    redraws: int

    @property
    def rejected(self) -> bool:
        """True when every draw scored below the threshold."""
        return self.pixels is None


def gate_settings(options: Mapping[str, Any]) -> GateSettings | None:
    """The gate a job's options ask for (validated at planning), or None."""
    gate = options.get(GATE_OPTION)
    if not gate:
        return None
    try:
        return GateSettings(float(gate["min_confidence"]), int(gate["max_redraws"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkerConfigError(
            f"job option {GATE_OPTION}: {gate!r} is not {{min_confidence, max_redraws}}"
        ) from exc


def evaluator_scorer() -> Scorer:
    """Score with the shipped evaluator (CPU, loaded and verified once per process)."""
    from models.evaluator import default_evaluator, embed

    model = default_evaluator()

    def score(pixels: np.ndarray, class_index: int) -> np.ndarray:
        _, logits = embed(model, pixels)  # (B, 10) float64
        probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        return np.asarray(probabilities[:, class_index], dtype=np.float64)

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
    """Score a batch; redraw the images below the threshold round by round; reject what never passes."""
    current = [np.asarray(row) for row in pixels]
    scores = [float(value) for value in scorer(np.asarray(pixels), class_index)]
    redraws = [0] * len(indices)
    failing = [row for row, value in enumerate(scores) if value < gate.min_confidence]
    for redraw in range(1, gate.max_redraws + 1):
        if not failing:
            break
        redrawn = render_pixels(
            generator, seed, class_index, [indices[row] for row in failing], redraws=[redraw] * len(failing)
        )  # (F, H, W, C)
        new_scores = scorer(redrawn, class_index)
        for position, row in enumerate(failing):
            current[row], scores[row], redraws[row] = redrawn[position], float(new_scores[position]), redraw
        failing = [row for row in failing if scores[row] < gate.min_confidence]
    rejected = set(failing)
    return [
        GatedImage(index, None if row in rejected else current[row], scores[row], redraws[row])
        for row, index in enumerate(indices)
    ]
