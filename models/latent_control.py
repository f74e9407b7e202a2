"""Creative control, the numerical half: latents from a job's recipe (`db.latent_control`), pure functions.

Every image's latent is still a function of seeds alone: (job seed, index, redraw) for its own noise, and
the sources' (seed, index, redraw) and recipes for variations and interpolations. Nothing depends on batch,
worker or device; `render_latents` is what the worker, the quality gate and `verify --regenerate` call.

- **Truncation ψ** scales the latent: z' = ψ·z. The generator's z is N(0, I) with mean 0, so this is the
  StyleGAN truncation w̄ + ψ(w − w̄) applied to z: ψ = 1.0 is the identity (and is skipped, so those bytes
  are today's), smaller ψ pulls every image toward the generator's "average" look. Chosen over BigGAN-style
  resampling of |z_j| > threshold because it is linear: it commutes with variations and interpolation (a
  variation of strength 0 under the source's ψ is the source latent bit for bit) and draws no extra random
  numbers.
- **Variation** of strength s: z = cos(θ)·z_source + sin(θ)·ε with θ = s·π/2 and ε the image's own noise
  (job seed, index, redraw). A rotation of two independent N(0, I) vectors is N(0, I) again, so every
  variation is as typical a latent as any image; s = 0 is the source, s = 1 an unrelated image. The mix is
  taken before the job's ψ (the source's ψ unless the job names one).
- **Interpolation**: frame k of N is slerp(z_start, z_end, k / (N − 1)) between the two endpoints' final
  latents (after their own ψ); frame 0 and frame N − 1 are the endpoints bit for bit.

Sums and angles are computed in float64 with Python's `math` (`math.fsum`: correctly rounded, so the same on
every machine), elementwise products in float64, rounded to float32 once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from models.sampling import latents_for

__all__ = ["mix", "render_latents", "slerp", "source_latent", "truncate"]

# Below this angle (radians) between two endpoints, slerp is a plain lerp (sin Ω ≈ 0).
SLERP_MIN_ANGLE = 1e-6


def truncate(latents: torch.Tensor, psi: float) -> torch.Tensor:
    """ψ·z, rounded once to float32; ψ = 1.0 returns `latents` untouched."""
    if psi == 1.0:
        return latents
    return (latents.double() * psi).float()


def mix(source: torch.Tensor, noise: torch.Tensor, strength: float) -> torch.Tensor:
    """cos(θ)·source + sin(θ)·noise with θ = strength·π/2, per row; strength 0 returns `source` exactly."""
    if strength == 0.0:
        return source.expand_as(noise).clone()
    theta = strength * math.pi / 2
    cos, sin = (0.0, 1.0) if strength == 1.0 else (math.cos(theta), math.sin(theta))
    return (source.double() * cos + noise.double() * sin).float()  # (B, z_dim)


def slerp(start: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two latents (z_dim,) at t in [0, 1]; t = 0 / 1 give the ends exactly."""
    if t == 0.0:
        return start.clone()
    if t == 1.0:
        return end.clone()
    a, b = start.double().tolist(), end.double().tolist()
    norm_a = math.sqrt(math.fsum(x * x for x in a))
    norm_b = math.sqrt(math.fsum(y * y for y in b))
    cos = math.fsum(x * y for x, y in zip(a, b, strict=True)) / (norm_a * norm_b)
    omega = math.acos(max(-1.0, min(1.0, cos)))
    if omega < SLERP_MIN_ANGLE:
        weight_a, weight_b = 1.0 - t, t
    else:
        weight_a = math.sin((1.0 - t) * omega) / math.sin(omega)
        weight_b = math.sin(t * omega) / math.sin(omega)
    return (start.double() * weight_a + end.double() * weight_b).float()  # (z_dim,)


def _pre_truncation(
    recipe: Mapping[str, Any] | None, seed: int, indices: Sequence[int], redraws: Sequence[int], z_dim: int
) -> torch.Tensor:
    """Latents (B, z_dim) of a job's images before the job's ψ."""
    if recipe and "interpolation" in recipe:
        interpolation = recipe["interpolation"]
        start = source_latent(interpolation["start"], z_dim)
        end = source_latent(interpolation["end"], z_dim)
        last = int(interpolation["frames"]) - 1
        rows = [slerp(start, end, index / last) for index in indices]
        return torch.stack(rows) if rows else torch.empty(0, z_dim)
    noise = latents_for(seed, indices, z_dim, redraws=redraws)  # (B, z_dim): the images' own draws
    if recipe and "variation" in recipe:
        variation = recipe["variation"]
        source = _source_pre_truncation(variation["source"], z_dim)[None, :]  # (1, z_dim)
        return mix(source, noise, float(variation["strength"]))
    return noise


def _source_pre_truncation(source: Mapping[str, Any], z_dim: int) -> torch.Tensor:
    """A source image's latent (z_dim,) before its own job's ψ (recursively through its recipe)."""
    recipe = source.get("control")
    return _pre_truncation(
        recipe, int(source["seed"]), [int(source["index"])], [int(source["redraw"])], z_dim
    )[0]


def source_latent(source: Mapping[str, Any], z_dim: int) -> torch.Tensor:
    """The final latent (z_dim,) the generator saw for a source image of a recipe (recursively)."""
    recipe = source.get("control")
    return truncate(_source_pre_truncation(source, z_dim), float((recipe or {}).get("truncation", 1.0)))


def redraw_moves(recipe: Mapping[str, Any] | None) -> bool:
    """Whether a quality-gate redraw gives an image another latent: yes for plain images and variations
    (their own noise is redrawn), no for interpolation frames (a frame is where it is on the path)."""
    return not (recipe and "interpolation" in recipe)


def render_latents(
    recipe: Mapping[str, Any] | None,
    seed: int,
    indices: Sequence[int],
    z_dim: int,
    redraws: Sequence[int] | None = None,
) -> torch.Tensor:
    """Latents (B, z_dim) float32 on the CPU for images `indices` of a job with this recipe.

    No recipe: exactly `models.sampling.latents_for` (plain jobs keep their bytes). Interpolation frames do
    not depend on `redraws` (a frame is where it is); variations and plain images redraw their own noise.
    """
    chosen = list(redraws) if redraws is not None else [0] * len(indices)
    if not recipe:
        return latents_for(seed, indices, z_dim, redraws=redraws)
    latents = _pre_truncation(recipe, seed, indices, chosen, z_dim)
    return truncate(latents, float(recipe.get("truncation", 1.0)))
