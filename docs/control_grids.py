"""Draw the picture grids of docs/controlling.md from the shipped fashion-cgan, with the code jobs use.

    .venv/bin/python docs/control_grids.py          # writes docs/images/control-*.png

Every tile is rendered as a job renders it: `models.latent_control.render_latents` on a recipe of the form
`db.latent_control` stores (so a tile equals the image a job with that recipe would deliver), then the
shipped generator (checkpoint verified against generator.sha256) on the CPU. Tiles are 28×28, drawn 2×
with a 2-pixel white gap.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from models.default_model import shipped_checkpoint_bytes  # noqa: E402
from models.inference import LoadedGenerator, load_generator  # noqa: E402
from models.latent_control import render_latents  # noqa: E402

OUT = ROOT / "docs" / "images"
SEED = 7  # the job seed of every source image below
SCALE, GAP = 2, 2
PSI = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8)
FRAMES = 8


def _render(
    generator: LoadedGenerator, category: str, recipe: dict | None, seed: int, indices: list[int]
) -> np.ndarray:
    latents = render_latents(recipe, seed, indices, generator.z_dim)  # (B, z_dim)
    classes = torch.full((len(indices),), generator.categories.index(category), dtype=torch.long)
    return generator.generate(classes, latents).numpy()  # (B, H, W, C) uint8


def _grid(rows: list[np.ndarray], path: Path) -> None:
    """Rows of uint8 (n, H, W, 1) tiles as one PNG, each tile scaled by SCALE."""
    height, width = rows[0].shape[1] * SCALE, rows[0].shape[2] * SCALE
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + GAP) - GAP, columns * (width + GAP) - GAP), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            big = np.kron(tile[:, :, 0], np.ones((SCALE, SCALE), dtype=np.uint8))
            top, left = r * (height + GAP), c * (width + GAP)
            canvas[top : top + height, left : left + width] = big
    Image.fromarray(canvas, mode="L").save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}: {len(rows)}×{columns} tiles, {path.stat().st_size} bytes")


def _source(index: int, recipe: dict | None = None) -> dict:
    """A recipe source: image `index` of a job with seed SEED (and that job's recipe)."""
    source = {"job_id": "docs", "index": index, "seed": SEED, "redraw": 0}
    if recipe:
        source["control"] = recipe
    return source


def main() -> None:
    data, _ = shipped_checkpoint_bytes()
    generator = load_generator(data, device="cpu")
    OUT.mkdir(parents=True, exist_ok=True)

    # ψ sweep: one row per category, one column per ψ, the same (seed, index) along a row.
    sweep = []
    for row, category in enumerate(("tshirt-top", "dress", "coat", "sneaker", "bag", "ankle-boot")):
        tiles = [
            _render(generator, category, {"truncation": psi} if psi != 1.0 else None, SEED, [row])[0]
            for psi in PSI
        ]
        sweep.append(np.stack(tiles))
    _grid(sweep, OUT / "control-truncation.png")

    # Variations of dress #3 (seed 7): one row per strength, 8 variations each (job seed 100).
    rows = [
        _render(generator, "dress", {"variation": {"source": _source(3), "strength": s}}, 100, list(range(8)))
        for s in STRENGTHS
    ]
    _grid(rows, OUT / "control-variations.png")

    # Interpolations: 8 frames between two images of one category, per row.
    pairs = (("sneaker", 0, 1), ("pullover", 2, 5), ("bag", 4, 6), ("ankle-boot", 1, 3))
    rows = []
    for category, start, end in pairs:
        recipe = {"interpolation": {"start": _source(start), "end": _source(end), "frames": FRAMES}}
        rows.append(_render(generator, category, recipe, 0, list(range(FRAMES))))
    _grid(rows, OUT / "control-interpolation.png")


if __name__ == "__main__":
    main()
