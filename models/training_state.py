"""What one rank trains and what a run is asked to do: the request, the networks' state, and its checkpoint dict.

`WorkerState` holds G, G_ema, D, both optimisers, the step, the per-step loss history and the periodic
evaluations; `state_payload` / `load_state` turn it into a full checkpoint dict and back (see
`models.checkpoint` for the format). `sample_images` draws the fixed-latent grid every checkpoint shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models.build import build_discriminator, build_generator
from models.checkpoint import FULL, capture_rng_states, carries_discriminator, restore_rng_states
from models.config import ModelConfig, Preset, TrainConfig, with_categories
from models.data.dataset import TrainingData
from models.ema import make_ema
from models.errors import TrainingInputError
from models.sampling import latents_for
from models.steps import make_optimizers

SAMPLE_COLUMNS = 8  # images per category row in the sample grid
SAMPLE_SEED = 20_240_601  # fixed, so grids of successive checkpoints show the same latents


@dataclass(frozen=True)
class TrainRequest:
    """One training run, as the CLI asked for it (JSON-friendly: it travels to Ray workers)."""

    preset: str
    data: str
    steps: int
    out_url: str
    name: str
    run: str
    workers: int = 1
    use_gpu: bool = False
    checkpoint_every: int = 500
    resume: bool = False
    seed: int | None = None  # None = the preset's
    log_every: int = 50
    eval_every: int = 0  # 0 = no periodic evaluation
    eval_samples: int = 500  # generated images per periodic evaluation (split evenly over the categories)
    init_from: str = ""  # where the starting generator came from (a file or name@version), for the record
    init_key: str = ""  # the run's pinned copy of it in the store (set by `training.pin_init_checkpoint`)
    init_sha256: str = ""  # and that copy's sha256, checked by every rank before it loads it
    d_warmup_steps: int = (
        0  # with an init: the first N steps update D only (G's weights and G_ema stay as loaded)
    )
    cpus_per_worker: int = 0  # CPU cores (torch threads) per rank; 0 = decided by `training_run.cpus_for`
    batch_size: int = 0  # per-rank batch; 0 = the preset's
    precision: str = "fp32"  # or "bf16": autocast to bfloat16 and channels_last (AMX/AVX512-BF16 CPUs, GPUs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRequest:
        """Inverse of `to_dict`."""
        return cls(**data)


@dataclass
class RunResult:
    """Where a finished run left its artefacts."""

    name: str
    run: str
    preset: str
    step: int
    checkpoint_uri: str
    generator_uri: str
    generator_key: str
    generator_sha256: str
    data_fingerprint: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)


@torch.no_grad()
def sample_images(generator: nn.Module, num_classes: int, columns: int = SAMPLE_COLUMNS) -> np.ndarray:
    """uint8 (num_classes, columns, H, W, C): column j uses the same latent in every category row."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    config = generator.config
    assert isinstance(config, ModelConfig)
    latents = latents_for(SAMPLE_SEED, range(columns), config.z_dim).repeat(num_classes, 1)  # (K·cols, z)
    classes = torch.arange(num_classes).repeat_interleave(columns)
    images = generator(latents.to(device), classes.to(device)).float().cpu()  # (K·cols, C, H, W)
    generator.train(was_training)
    pixels = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return pixels.reshape(num_classes, columns, *pixels.shape[1:]).numpy()


@dataclass
class WorkerState:
    """Everything a rank trains: the networks, their optimisers, the step counter and the loss history."""

    model: ModelConfig
    train: TrainConfig
    generator: nn.Module
    generator_ema: nn.Module
    discriminator: nn.Module
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    step: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {"step": [], "loss_d": [], "loss_g": []})
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # periodic evaluations, in step order


def init_state(preset: Preset, data: TrainingData, seed: int, device: torch.device) -> WorkerState:
    """Fresh networks (identical on every rank: same seed) for the data's categories."""
    model = with_categories(preset.model, data.categories)
    train = TrainConfig.from_dict({**preset.train.to_dict(), "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = build_generator(model).to(device)
        discriminator = build_discriminator(model).to(device)
    optimizer_g, optimizer_d = make_optimizers(generator, discriminator, train)
    return WorkerState(model, train, generator, make_ema(generator), discriminator, optimizer_g, optimizer_d)


def state_payload(state: WorkerState, preset: str, fingerprint: str) -> dict[str, Any]:
    """A full checkpoint dict of the state (see `models.checkpoint`)."""
    return {
        "kind": FULL,
        "preset": preset,
        "model_config": state.model.to_dict(),
        "train_config": state.train.to_dict(),
        "step": state.step,
        "generator": state.generator.state_dict(),
        "generator_ema": state.generator_ema.state_dict(),
        "discriminator": state.discriminator.state_dict(),
        "optimizer_g": state.optimizer_g.state_dict(),
        "optimizer_d": state.optimizer_d.state_dict(),
        "rng": capture_rng_states(),
        "history": state.history,
        "evaluations": state.evaluations,
        "data_fingerprint": fingerprint,
    }


def load_state(state: WorkerState, payload: dict[str, Any]) -> None:
    """Put a full checkpoint's weights, optimiser states, step, history and RNG states into `state`."""
    if ModelConfig.from_dict(payload["model_config"]) != state.model:
        raise TrainingInputError(
            "--resume: the checkpoint's model config differs from this run's --preset and --data"
        )
    state.generator.load_state_dict(payload["generator"])
    state.generator_ema.load_state_dict(payload["generator_ema"])
    state.discriminator.load_state_dict(payload["discriminator"])
    state.optimizer_g.load_state_dict(payload["optimizer_g"])
    state.optimizer_d.load_state_dict(payload["optimizer_d"])
    state.step = int(payload["step"])
    state.history = {key: list(values) for key, values in payload.get("history", {}).items()} or state.history
    state.evaluations = [dict(evaluation) for evaluation in payload.get("evaluations", [])]
    restore_rng_states(payload["rng"])


def config_differences(
    found: dict[str, Any], wanted: dict[str, Any], skip: tuple[str, ...] = ()
) -> list[str]:
    """`field: found ≠ wanted` for each model-config field on which two configs differ."""
    return [
        f"{key}: {found.get(key)!r} ≠ {wanted.get(key)!r}"
        for key in sorted(set(found) | set(wanted))
        if key not in skip and found.get(key) != wanted.get(key)
    ]


def apply_init(state: WorkerState, payload: dict[str, Any]) -> None:
    """Start a fresh run from a trained generator.

    From a generator-only checkpoint, G and G_ema both take its EMA weights and D starts fresh. From a
    checkpoint that carries D (a full or a trainable one) the run continues the pair: G ← its G, G_ema ← its
    G_ema, D ← its D, so D's scores still fit the G it learned against (a fresh D against a trained G gives
    G poor gradients until it catches up: see docs/training.md). The optimisers start fresh (the new run's
    learning rates and batch size may differ); the model config must be the run's, categories included.
    """
    differences = config_differences(payload["model_config"], state.model.to_dict())
    if differences:
        raise TrainingInputError(
            "--init-from: the checkpoint's model differs from this run's preset and data ("
            + "; ".join(differences)
            + ")"
        )
    pair = carries_discriminator(payload)
    state.generator.load_state_dict(payload["generator" if pair else "generator_ema"])
    state.generator_ema.load_state_dict(payload["generator_ema"])
    if pair:
        state.discriminator.load_state_dict(payload["discriminator"])
