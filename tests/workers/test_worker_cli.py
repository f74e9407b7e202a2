"""`catalogan worker` picks its processes per GPU (one by default) and pins each child to the right physical device."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner, Result

from workers import cli as worker_cli
from workers.cli import ChildSpec, cpu_split, gpu_split, physical_gpu_ids


def test_children_get_physical_ids_when_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no CUDA_VISIBLE_DEVICES, when GPUs 0 and 1 are chosen, then the children see GPUs 0 and 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert physical_gpu_ids([0, 1]) == ["0", "1"]


def test_children_keep_the_operators_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the operator pinned this supervisor to physical GPUs 3 and 5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    # When both visible GPUs get a worker, then each child is pinned to its physical id, not to 0 and 1
    assert physical_gpu_ids([0, 1]) == ["3", "5"]


def test_a_cpu_worker_defaults_to_one_single_threaded_process_per_core_and_at_least_two() -> None:
    # Given a 4-core box and no --concurrency, then 4 processes of 1 torch thread each
    assert cpu_split(None, 4) == (4, 1)
    # And a 1-core box gets 2 (one process alone waits at every chunk boundary), unless asked for 1
    assert cpu_split(None, 1) == (2, 1)
    assert cpu_split(1, 1) == (1, 1)


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


def test_several_processes_per_gpu_share_the_cores_evenly() -> None:
    # Given 2 GPUs, 3 processes each and 16 cores, then 6 children, 3 per GPU, with 16 // 6 = 2 threads each
    assert gpu_split(["3", "5"], 3, 16) == [("3", 2)] * 3 + [("5", 2)] * 3
    # And more processes than cores still get one thread each; one per GPU gets all of its share
    assert gpu_split(["0"], 4, 2) == [("0", 1)] * 4
    assert gpu_split(["0", "1"], 1, 16) == [("0", 8), ("1", 8)]
    with pytest.raises(ValueError, match="at least 1"):
        gpu_split(["0"], 0, 16)


def _started_children(
    monkeypatch: pytest.MonkeyPatch, *args: str, visible: int = 1
) -> tuple[Result, list[ChildSpec]]:
    """`catalogan worker ARGS` on an 8-core box with `visible` GPUs, the supervisor replaced by a recorder."""
    started: list[ChildSpec] = []

    def record(specs: list[ChildSpec]) -> int:
        started.extend(specs)
        return 0

    monkeypatch.setattr(worker_cli, "supervise", record)
    monkeypatch.setattr(worker_cli, "_visible_gpus", lambda: visible)
    monkeypatch.setattr(worker_cli, "usable_cores", lambda: 8)
    monkeypatch.setattr(worker_cli, "_run_celery_worker", lambda *a: pytest.fail("no supervisor was used"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return CliRunner().invoke(worker_cli.worker, list(args)), started


def test_processes_per_gpu_start_that_many_pinned_children_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # When the worker runs on GPUs 0 and 1 (of 2 visible) with 2 processes per GPU
    result, started = _started_children(monkeypatch, "--gpus", "0,1", "--processes-per-gpu", "2", visible=2)
    # Then the supervisor starts 4 pinned children: 2 on each GPU, 8 cores // 4 = 2 threads each
    assert result.exit_code == 0, result.output
    assert [(spec.env["CUDA_VISIBLE_DEVICES"], spec.env["OMP_NUM_THREADS"]) for spec in started] == [
        ("0", "2"),
        ("0", "2"),
        ("1", "2"),
        ("1", "2"),
    ]
    assert all(spec.env["CATALOGAN_DEVICE"] == "cuda" for spec in started)
    assert all(spec.command[-6:-4] == ["--gpus", "pinned"] for spec in started)
    # And on the one visible GPU, CATALOGAN_PROCESSES_PER_GPU=3 supervises 3 children instead of running alone
    monkeypatch.setenv("CATALOGAN_PROCESSES_PER_GPU", "3")
    result, started = _started_children(monkeypatch)
    assert result.exit_code == 0, result.output
    assert [(spec.env["CUDA_VISIBLE_DEVICES"], spec.env["OMP_NUM_THREADS"]) for spec in started] == [
        ("0", "2")
    ] * 3


def test_processes_per_gpu_zero_is_refused_naming_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    # When --processes-per-gpu 0, then a usage error naming the option and its rule, and nothing starts
    result, started = _started_children(monkeypatch, "--gpus", "0", "--processes-per-gpu", "0")
    assert result.exit_code == 2 and started == []
    assert "Invalid value for '--processes-per-gpu': 0 is not in the range x>=1." in result.output


def test_an_unknown_inference_graph_is_one_line_naming_the_variable_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given CATALOGAN_INFERENCE_GRAPH set to a graph catalogan does not have
    monkeypatch.setenv("CATALOGAN_INFERENCE_GRAPH", "fused")
    started: list[object] = []
    monkeypatch.setattr(worker_cli.subprocess, "Popen", lambda *a, **k: started.append(a))
    # When the worker starts
    result = CliRunner().invoke(worker_cli.worker, ["--concurrency", "1"])
    # Then it exits non-zero with one line naming the variable and the allowed values, and starts no process
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: CATALOGAN_INFERENCE_GRAPH: Input should be 'auto', 'plain' or 'folded' (see docs/configuration.md)"
    ]
    assert started == []


def test_catalogan_device_picks_the_devices_when_gpus_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """CATALOGAN_DEVICE was documented as the worker's device and set by the compose file, but `catalogan
    worker` overwrote it from --gpus: `cpu` on a GPU host still ran on CUDA, `cuda:1` was ignored."""
    cpu_runs: list[tuple[object, ...]] = []

    def cpu_alone(*args: object) -> None:
        cpu_runs.append(args)

    # Given a box with one visible GPU and CATALOGAN_DEVICE=cpu, when the worker starts without --gpus
    monkeypatch.setenv("CATALOGAN_DEVICE", "cpu")
    monkeypatch.setattr(worker_cli, "_visible_gpus", lambda: 1)
    monkeypatch.setattr(worker_cli, "supervise", lambda *a: pytest.fail("no GPU child may start"))
    monkeypatch.setattr(worker_cli, "_run_celery_worker", cpu_alone)
    result = CliRunner().invoke(worker_cli.worker, ["--concurrency", "1"])
    # Then it runs on the CPU, no GPU child
    assert result.exit_code == 0, result.output
    assert len(cpu_runs) == 1 and str(cpu_runs[0][1]).startswith("cpu-")
    # And an explicit --gpus still wins over the variable
    result, started = _started_children(monkeypatch, "--gpus", "0", "--processes-per-gpu", "2")
    assert result.exit_code == 0, result.output
    assert [spec.env["CUDA_VISIBLE_DEVICES"] for spec in started] == ["0", "0"]
    # Given CATALOGAN_DEVICE=cuda:0, then one pinned child on GPU 0 (with 2 per GPU: the supervisor)
    monkeypatch.setenv("CATALOGAN_DEVICE", "cuda:0")
    monkeypatch.setenv("CATALOGAN_PROCESSES_PER_GPU", "2")
    result, started = _started_children(monkeypatch)
    assert result.exit_code == 0, result.output
    assert [(spec.env["CUDA_VISIBLE_DEVICES"], spec.env["CATALOGAN_DEVICE"]) for spec in started] == [
        ("0", "cuda")
    ] * 2


def test_catalogan_device_cuda_without_a_gpu_or_malformed_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_cli, "_visible_gpus", lambda: 0)
    monkeypatch.setattr(worker_cli, "_run_celery_worker", lambda *a: pytest.fail("nothing may start"))
    monkeypatch.setattr(worker_cli, "supervise", lambda *a: pytest.fail("nothing may start"))
    monkeypatch.setenv("CATALOGAN_DEVICE", "cuda")
    result = CliRunner().invoke(worker_cli.worker, [])
    assert result.exit_code == 6, result.output
    assert (
        result.output.strip() == "Error: CATALOGAN_DEVICE=cuda: no CUDA device is visible (use auto or cpu)"
    )
    monkeypatch.setenv("CATALOGAN_DEVICE", "gpu")
    result = CliRunner().invoke(worker_cli.worker, [])
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: CATALOGAN_DEVICE")
