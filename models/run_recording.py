"""What rank 0 records while it trains, besides checkpoints: `history.jsonl` and periodic evaluation.

`ProgressRecorder` writes one history line per progress update (the driver and `catalogan train show
--follow` read progress from it); `evaluate_step` measures G_ema with the project's evaluator at
`--eval-every` steps, and `write_evaluation_artifacts` keeps the latest grid, the quality curve and the
best-so-far generator. Keys and line format: docs/training.md, "What a run records".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from db.errors import ObjectNotFoundError
from db.storage import ObjectStore
from models.checkpoint import checkpoint_to_bytes, generator_only, sha256_hex
from models.config import ModelConfig
from models.errors import TrainingError
from models.plots import quality_curve_png, sample_grid_png
from models.runs import BEST, HISTORY, QUALITY_PNG, SAMPLES_PNG, history_bytes, parse_history, run_prefix
from models.training_state import TrainRequest, WorkerState, sample_images, state_payload

BEST_GENERATOR_FILE = "generator-best.pt"
EVAL_SEED = 7  # latents of periodic evaluation: the same images every evaluation of every run
MIN_EVAL_SAMPLES_PER_CLASS = 4  # fewer and FID_fm / accuracy say nothing


class ProgressRecorder:
    """Rank 0's `history.jsonl`: one line per progress update, the whole file rewritten each time.

    Losses are averaged over the steps since the previous line; throughput counts this session's steps.
    On resume the lines past the resumed step are dropped (they belong to the steps about to be redone).
    """

    def __init__(self, store: ObjectStore, request: TrainRequest, images_per_step: int, start_step: int):
        self.store, self.request, self.images_per_step = store, request, images_per_step
        self.key = f"{run_prefix(request.name, request.run)}/{HISTORY}"
        self.lines: list[dict[str, Any]] = []
        if start_step > 0:
            try:
                self.lines = [
                    line for line in parse_history(store.get(self.key)) if line["step"] <= start_step
                ]
            except ObjectNotFoundError:
                self.lines = []
        self.started, self.start_step = time.monotonic(), start_step
        self.loss_sums, self.loss_count = [0.0, 0.0], 0

    def add(self, loss_d: float, loss_g: float) -> None:
        """Count one step's losses towards the next line."""
        self.loss_sums[0] += loss_d
        self.loss_sums[1] += loss_g
        self.loss_count += 1

    def record(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Write the line of `step` (with `extra`, e.g. evaluation metrics) and return it."""
        elapsed = time.monotonic() - self.started
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        count = max(self.loss_count, 1)
        line: dict[str, Any] = {
            "step": step,
            "d_loss": self.loss_sums[0] / count,
            "g_loss": self.loss_sums[1] / count,
            "steps_per_s": rate,
            "images_per_s": rate * self.images_per_step,
            "elapsed_s": elapsed,
            "eta_s": (self.request.steps - step) / rate if rate > 0 else None,
            **extra,
        }
        self.loss_sums, self.loss_count = [0.0, 0.0], 0
        self.lines.append(line)
        self.store.put(self.key, history_bytes(self.lines), content_type="application/x-ndjson")
        return line


def fashion_mnist_root(spec: str) -> Path:
    """The folder whose test split periodic evaluation compares with: that of a `fashion-mnist:/path` spec."""
    from models.data.fashion_mnist import DEFAULT_ROOT

    return Path(spec.split(":", 1)[1]) if spec.startswith("fashion-mnist:") else DEFAULT_ROOT


def check_evaluable(model: ModelConfig) -> None:
    """Periodic evaluation needs the evaluator's categories: raise `TrainingError` naming the option otherwise."""
    from models.data.fashion_mnist import CATEGORIES

    if model.categories != CATEGORIES:
        raise TrainingError(
            f"--eval-every needs a model of Fashion-MNIST's {len(CATEGORIES)} categories (the evaluator's); "
            f"this run's data has {len(model.categories)}: {', '.join(model.categories[:5])}…"
        )


def evaluate_step(state: WorkerState, request: TrainRequest) -> dict[str, Any]:
    """Periodic evaluation of G_ema: FID_fm, conditional accuracy, per-category accuracy (history keys)."""
    from models.evaluation import periodic_evaluation, periodic_reference

    generator = state.generator_ema
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()

    @torch.no_grad()
    def generate(classes: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        images = generator(latents.to(device), classes.to(device)).float().cpu()  # (B, C, H, W) in [-1, 1]
        return ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    try:
        metrics = periodic_evaluation(
            generate,
            max(MIN_EVAL_SAMPLES_PER_CLASS, request.eval_samples // state.model.num_classes),
            reference=periodic_reference(fashion_mnist_root(request.data)),
            z_dim=state.model.z_dim,
            seed=EVAL_SEED,
        )
    finally:
        generator.train(was_training)
    return {"step": state.step, **metrics}


def write_evaluation_artifacts(
    store: ObjectStore,
    request: TrainRequest,
    state: WorkerState,
    fingerprint: str,
    evaluation: dict[str, Any],
) -> None:
    """Rank 0 after an evaluation: the latest grid, the quality curve, and the best-so-far generator."""
    prefix = run_prefix(request.name, request.run)
    title = f"{request.name} {request.run} step {state.step}"
    grid = sample_images(state.generator_ema, state.model.num_classes)
    store.put(
        f"{prefix}/{SAMPLES_PNG}",
        sample_grid_png(grid, state.model.categories, title),
        content_type="image/png",
    )
    store.put(
        f"{prefix}/{QUALITY_PNG}", quality_curve_png(state.evaluations, title), content_type="image/png"
    )
    earlier = [e["fid_fm"] for e in state.evaluations if e["step"] < state.step]
    if earlier and evaluation["fid_fm"] >= min(earlier):
        return
    payload = generator_only(state_payload(state, request.preset, fingerprint))
    generator_bytes = checkpoint_to_bytes(payload)
    store.put(f"{prefix}/{BEST_GENERATOR_FILE}", generator_bytes)
    best = {
        **evaluation,
        "generator_key": f"{prefix}/{BEST_GENERATOR_FILE}",
        "generator_sha256": sha256_hex(generator_bytes),
    }
    store.put(f"{prefix}/{BEST}", json.dumps(best, indent=2).encode(), content_type="application/json")
