"""Fixtures for tests/models: the real Fashion-MNIST files (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import os

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
