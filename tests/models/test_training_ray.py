"""Training on a real local Ray cluster (2 CPU workers, gloo DDP) with the `tiny` preset.

One Ray cluster (`ray_cluster`, tests/models/conftest.py) serves the whole session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db.storage import LocalStore, open_store
from models.checkpoint import checkpoint_from_bytes
from models.errors import TrainingError
from models.inference import load_generator
from models.training import TrainRequest, fit_with_ray, prepare_run, run_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three categories of eight small PNGs each, with distinct brightness per category."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for category, level in (("dark", 30), ("mid", 128), ("light", 220)):
        (root / category).mkdir()
        for i in range(8):
            pixels = np.clip(rng.normal(level, 20, (12, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / category / f"{i}.png")
    return root


def _request(store: LocalStore, data: Path, run: str, steps: int, **extra: object) -> TrainRequest:
    return TrainRequest.from_dict(
        {
            "preset": "tiny",
            "data": str(data),
            "steps": steps,
            "out_url": store.url,
            "name": "tiny",
            "run": run,
            "workers": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            **extra,
        }
    )


def _final_state(store: LocalStore, run: str, step: int) -> dict[str, object]:
    return checkpoint_from_bytes(store.get(f"models/tiny/{run}/checkpoint-{step:08d}.pt"))


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.allclose(a.float(), b.float(), atol=1e-6), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_two_workers_train_checkpoint_and_resume_exactly(
    ray_cluster: str, image_folder: Path, local_store: LocalStore, tmp_path: Path
) -> None:
    # Given 2 Ray workers and the tiny preset on a 3-category image folder
    # When one run trains 4 steps straight, and another trains 2 steps, stops, and resumes to 4
    straight = fit_with_ray(_request(local_store, image_folder, "straight", 4), tmp_path / "ray")
    first_half = fit_with_ray(_request(local_store, image_folder, "split", 2), tmp_path / "ray")
    resumed = fit_with_ray(_request(local_store, image_folder, "split", 4, resume=True), tmp_path / "ray")
    # Then both runs end at step 4 with the same weights, optimiser states and loss history
    assert (straight.step, first_half.step, resumed.step) == (4, 2, 4)
    a, b = _final_state(local_store, "straight", 4), _final_state(local_store, "split", 4)
    for key in ("generator", "generator_ema", "discriminator", "optimizer_g", "optimizer_d", "history"):
        _assert_same_tensors(a[key], b[key], key)
    # And every checkpoint came with a loss curve and a sample grid; Ray Train's run folder holds no copy (on a
    # multi-node cluster that local folder is out of the worker nodes' reach, and nothing read the copy)
    keys = {info.key for info in local_store.list("models/tiny/straight/")}
    for step in (2, 4):
        assert f"models/tiny/straight/checkpoint-{step:08d}.pt" in keys
        assert local_store.get(f"models/tiny/straight/samples-{step:08d}.png").startswith(b"\x89PNG")
        assert local_store.get(f"models/tiny/straight/loss-{step:08d}.png").startswith(b"\x89PNG")
    assert (tmp_path / "ray").is_dir() and not list((tmp_path / "ray").rglob("checkpoint*"))
    # And the final generator loads for inference with the folder's categories
    generator = load_generator(local_store.get("models/tiny/straight/generator.pt"))
    assert generator.categories == ("dark", "light", "mid")
    latest = json.loads(local_store.get("models/tiny/straight/latest.json"))
    assert latest["done"] and latest["step"] == 4


def test_plain_loop_matches_itself_and_refuses_bad_resumes(image_folder: Path, tmp_path: Path) -> None:
    # Given the plain (Ray-free) loop, one rank
    store = open_store((tmp_path / "objects").as_uri())
    assert isinstance(store, LocalStore)
    request = _request(store, image_folder, "plain", 2, workers=1)
    # When it runs, its losses are recorded per step
    state = run_worker(request, log=lambda _line: None)
    assert state.step == 2 and len(state.history["loss_d"]) == 2
    # Then the run cannot be started again without --resume, nor resumed past its end
    with pytest.raises(TrainingError, match="--resume"):
        prepare_run(request, store)
    with pytest.raises(TrainingError, match="already at step 2"):
        prepare_run(_request(store, image_folder, "plain", 2, workers=1, resume=True), store)
    with pytest.raises(TrainingError, match="nothing to resume"):
        prepare_run(_request(store, image_folder, "", 2, workers=1, resume=True, name="other"), store)
