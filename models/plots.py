"""Pictures that come with every checkpoint: the loss curve and a sample grid (one row per category).

Matplotlib with the Agg backend (no display); each function returns PNG bytes for the object store.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

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
