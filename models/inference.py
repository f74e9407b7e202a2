"""THE interface the generation workers use: load a generator from checkpoint bytes, turn latents into pixels.

`load_generator(bytes)` builds the EMA generator a checkpoint (full or generator-only) holds, in eval mode, so
an image depends on its own latent and category alone, never on its batch. `generate` returns uint8
(B, H, W, C) on the CPU, ready to encode.
"""

from __future__ import annotations

import torch
from torch import nn

from models.build import build_generator
from models.checkpoint import GENERATOR, checkpoint_from_bytes, checkpoint_to_bytes, sha256_hex
from models.config import ModelConfig, get_preset
from models.errors import CheckpointError


class LoadedGenerator:
    """An EMA generator on a device with what callers need to know about it."""

    def __init__(
        self, module: nn.Module, config: ModelConfig, checkpoint_sha256: str, device: torch.device
    ) -> None:
        self.module = module
        self.config = config
        self.categories: tuple[str, ...] = config.categories or tuple(
            f"class-{i}" for i in range(config.num_classes)
        )
        self.checkpoint_sha256 = checkpoint_sha256
        self.z_dim = config.z_dim
        self.resolution = config.resolution
        self.channels = config.channels
        self.device = device

    def generate(self, class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, H, W, C) on the CPU; runs under torch.inference_mode(), bf16 autocast on CUDA.

        `class_indices` (B,) int64 in [0, num_classes); `latents` (B, z_dim) float32 (see `models.sampling`).
        """
        if latents.ndim != 2 or latents.shape[1] != self.z_dim:
            raise ValueError(f"latents must be (B, {self.z_dim}), got {tuple(latents.shape)}")
        if class_indices.shape != (latents.shape[0],):
            raise ValueError(f"class_indices must be ({latents.shape[0]},), got {tuple(class_indices.shape)}")
        if len(class_indices) and (
            int(class_indices.min()) < 0 or int(class_indices.max()) >= self.config.num_classes
        ):
            raise ValueError(f"class indices must be in 0..{self.config.num_classes - 1}")
        with torch.inference_mode():
            z = latents.to(self.device, torch.float32)
            y = class_indices.to(self.device, torch.int64)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    images = self.module(z, y)
            else:
                images = self.module(z, y)  # (B, C, H, W) in [-1, 1]
            pixels = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            return pixels.permute(0, 2, 3, 1).contiguous().cpu()  # (B, H, W, C)


def load_generator(data: bytes, *, device: str | torch.device = "cpu") -> LoadedGenerator:
    """The EMA generator from a checkpoint's bytes, in eval mode on `device`; raises `CheckpointError`."""
    payload = checkpoint_from_bytes(data)
    config = ModelConfig.from_dict(payload["model_config"])
    module = build_generator(config)
    try:
        module.load_state_dict(payload["generator_ema"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match its config: {exc}") from exc
    target = torch.device(device)
    module.eval().requires_grad_(False).to(target)
    return LoadedGenerator(module, config, sha256_hex(data), target)


def random_generator_checkpoint(preset: str = "tiny", seed: int = 0) -> bytes:
    """A randomly initialised generator-only checkpoint, for tests only (never for real images)."""
    chosen = get_preset(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_generator(chosen.model)
    return checkpoint_to_bytes(
        {
            "kind": GENERATOR,
            "preset": preset,
            "model_config": chosen.model.to_dict(),
            "train_config": chosen.train.to_dict(),
            "step": 0,
            "generator_ema": module.state_dict(),
            "data_fingerprint": "random",
        }
    )
