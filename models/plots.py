"""Pictures that come with every checkpoint: the loss curve and a sample grid (one row per category), and
with periodic evaluation the quality curve (FID_fm and per-category accuracy against step).

Matplotlib with the Agg backend (no display); each function returns PNG bytes for the object store.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

PLOT_DPI = 100
SMOOTHING_WINDOW = 25  # points in the moving average drawn over the raw losses


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _smooth(values: np.ndarray) -> np.ndarray:
    window = min(SMOOTHING_WINDOW, len(values))
    return np.convolve(values, np.ones(window) / window, mode="valid") if window > 1 else values


def loss_curve_png(
    steps: Sequence[float], loss_d: Sequence[float], loss_g: Sequence[float], title: str = ""
) -> bytes:
    """Discriminator and generator losses against the step (raw, faint; moving average, solid)."""
    figure, axis = plt.subplots(figsize=(7, 3.5))
    x = np.asarray(steps, dtype=float)
    for values, label, color in ((loss_d, "D", "tab:blue"), (loss_g, "G", "tab:orange")):
        y = np.asarray(values, dtype=float)
        axis.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
        if len(y):
            smooth = _smooth(y)
            axis.plot(x[len(x) - len(smooth) :], smooth, color=color, label=f"loss {label}")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title or "training losses")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper right")
    return _png(figure)


def sample_grid_png(images: np.ndarray, row_labels: Sequence[str], title: str = "") -> bytes:
    """A grid of uint8 images (rows, cols, H, W, C), one labelled row per category."""
    rows, cols, height, width, channels = images.shape
    # Tile into one canvas with a 1 px gap: (rows·(H+1), cols·(W+1), C).
    canvas = np.full((rows * (height + 1), cols * (width + 1), channels), 255, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            canvas[
                r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width
            ] = images[r, c]
    scale = 0.03 * max(height, 16) / 16
    figure, axis = plt.subplots(figsize=(1.5 + cols * (width + 1) * scale, 0.5 + rows * (height + 1) * scale))
    axis.imshow(
        canvas[..., 0] if channels == 1 else canvas, cmap="gray" if channels == 1 else None, vmin=0, vmax=255
    )
    axis.set_yticks([r * (height + 1) + height / 2 for r in range(rows)], list(row_labels))
    axis.set_xticks([])
    axis.set_title(title)
    return _png(figure)


def quality_curve_png(evaluations: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """FID_fm (left) and per-category conditional accuracy (right) against step, from periodic evaluations."""
    figure, (fid_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 3.5))
    steps = [float(e["step"]) for e in evaluations]
    fid_axis.plot(steps, [float(e["fid_fm"]) for e in evaluations], marker="o", color="tab:purple")
    fid_axis.set_xlabel("step")
    fid_axis.set_ylabel("FID_fm (lower is better)")
    fid_axis.grid(alpha=0.3)
    categories = list(evaluations[-1].get("per_category_accuracy", {})) if evaluations else []
    for category in categories:
        values = [e.get("per_category_accuracy", {}).get(category) for e in evaluations]
        accuracy_axis.plot(steps, [math.nan if v is None else float(v) for v in values], label=category)
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_ylabel("conditional accuracy")
    accuracy_axis.set_ylim(0, 1)
    accuracy_axis.grid(alpha=0.3)
    if categories:
        accuracy_axis.legend(loc="lower right", fontsize="x-small", ncol=2)
    figure.suptitle(title or "quality during training")
    return _png(figure)
