"""`catalogan worker` picks one process per GPU and pins each child to the right physical device."""

from __future__ import annotations

import click
import pytest

from workers.cli import cpu_split, physical_gpu_ids


def test_children_get_physical_ids_when_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no CUDA_VISIBLE_DEVICES, when GPUs 0 and 1 are chosen, then the children see GPUs 0 and 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert physical_gpu_ids([0, 1]) == ["0", "1"]


def test_children_keep_the_operators_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the operator pinned this supervisor to physical GPUs 3 and 5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    # When both visible GPUs get a worker, then each child is pinned to its physical id, not to 0 and 1
    assert physical_gpu_ids([0, 1]) == ["3", "5"]


def test_a_cpu_worker_defaults_to_one_single_threaded_process_per_core() -> None:
    # Given a 4-core box and no --concurrency, then 4 processes of 1 torch thread each
    assert cpu_split(None, 4) == (4, 1)


def test_fewer_processes_than_cores_share_the_cores_as_torch_threads() -> None:
    # Given 8 cores and --concurrency 2, then each process runs 4 torch threads; more processes than cores
    # still get one thread each
    assert cpu_split(2, 8) == (2, 4)
    assert cpu_split(3, 2) == (3, 1)


def test_concurrency_zero_is_refused_naming_the_option() -> None:
    # When --concurrency 0, then a usage error that names the option
    with pytest.raises(click.BadParameter) as refused:
        cpu_split(0, 2)
    assert refused.value.format_message() == "Invalid value for --concurrency: must be at least 1, got 0"
