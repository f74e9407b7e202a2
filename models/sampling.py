"""Deterministic latents: image `i` of a job depends on (seed, i) alone, never on batch position or worker.

Each latent comes from its own `torch.Generator` seeded with a 64-bit mix of (seed, index, redraw), so
any chunk, batch size or machine yields the same latent for the same image. CPU generators are used
on every device (CUDA RNG streams differ between GPU models); the latents are moved to the device after.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

MASK_63_BITS = (1 << 63) - 1


def image_seed(job_seed: int, index: int, redraw: int = 0) -> int:
    """A 63-bit seed for one image, mixed with BLAKE2b so neighbouring indices are unrelated."""
    digest = hashlib.blake2b(f"{job_seed}:{index}:{redraw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MASK_63_BITS


def latents_for(
    job_seed: int, indices: Sequence[int], z_dim: int, *, redraws: Sequence[int] | None = None
) -> torch.Tensor:
    """Latent vectors for the given image indices, shape (len(indices), z_dim), float32 on the CPU."""
    out = torch.empty(len(indices), z_dim, dtype=torch.float32)
    generator = torch.Generator(device="cpu")
    for row, index in enumerate(indices):
        redraw = 0 if redraws is None else redraws[row]
        generator.manual_seed(image_seed(job_seed, index, redraw))
        out[row] = torch.randn(z_dim, generator=generator)
    return out
