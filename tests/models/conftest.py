"""Fixtures for tests/models: the real Fashion-MNIST files (Debian's dataset-fashion-mnist), files that are not
checkpoints."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist


def _require_fashion_mnist() -> None:
    if not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Fashion-MNIST is missing at {DEFAULT_ROOT} (CI installs dataset-fashion-mnist)")
        pytest.skip(f"Fashion-MNIST is not installed at {DEFAULT_ROOT}")


@pytest.fixture(scope="session")
def fashion_train() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train split: uint8 (60000, 28, 28) images and int64 labels."""
    _require_fashion_mnist()
    return load_fashion_mnist(DEFAULT_ROOT, "train")


@pytest.fixture(scope="session")
def fashion_test() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test split: uint8 (10000, 28, 28) images and int64 labels."""
    _require_fashion_mnist()
    return load_fashion_mnist(DEFAULT_ROOT, "test")


RAY_CPUS = 4  # two training workers, Ray Train's controller, and slack for a killed run's leftovers


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster for the whole session (tens of seconds to start on a busy box); yields its address.

    Tests in this process use it through `ray.init` having been called; subprocesses (`catalogan train
    --ray-address ADDRESS`) connect to it as any client of a running cluster would.
    """
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture
def not_checkpoint_files(tmp_path: Path) -> dict[str, Path]:
    """Files someone might pass as a checkpoint that catalogan cannot use, by name: text, empty, truncated, a PNG,
    a plain torch state dict, and a checkpoint whose weights do not fit its own config."""
    import torch
    from PIL import Image

    from models.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes
    from models.inference import random_generator_checkpoint

    good = random_generator_checkpoint("fashion-cgan", seed=3)
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, "PNG")
    state_dict = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, state_dict)
    payload = checkpoint_from_bytes(good)
    other_widths = {**payload, "model_config": {**payload["model_config"], "g_width": 32}}
    contents = {
        "notes.txt": b"not a checkpoint\n",
        "hello.txt": b"hello\n",  # torch's legacy unpickler said "KeyError: 101"
        "empty.pt": b"",
        "truncated.pt": good[: len(good) // 2],
        "image.png": png.getvalue(),
        "state-dict.pt": state_dict.getvalue(),  # a torch file, but not a catalogan checkpoint
        "other-widths.pt": checkpoint_to_bytes(other_widths),  # weights that do not fit its own config
    }
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in contents}
