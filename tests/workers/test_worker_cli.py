"""`catalogan worker` picks one process per GPU and pins each child to the right physical device."""

from __future__ import annotations

import pytest

from workers.cli import physical_gpu_ids


def test_children_get_physical_ids_when_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no CUDA_VISIBLE_DEVICES, when GPUs 0 and 1 are chosen, then the children see GPUs 0 and 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert physical_gpu_ids([0, 1]) == ["0", "1"]


def test_children_keep_the_operators_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the operator pinned this supervisor to physical GPUs 3 and 5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    # When both visible GPUs get a worker, then each child is pinned to its physical id, not to 0 and 1
    assert physical_gpu_ids([0, 1]) == ["3", "5"]
