"""The training benchmark's helpers (`bench/bench_train.py`) and the step hook it times `run_worker` with.

Nothing here is timed: the clock is faked where a rate is computed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from db.storage import open_store
from models.data.dataset import TrainingData, open_dataset
from models.training import TrainRequest, run_worker, seed_global_rng

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_train.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/bench_train.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Make time.perf_counter return the values pushed on the yielded list, in order; CPU time = wall / 2."""
    ticks: list[float] = []
    last: list[float] = [0.0]

    def perf_counter() -> float:
        last[0] = ticks.pop(0)
        return last[0]

    monkeypatch.setattr("time.perf_counter", perf_counter)
    monkeypatch.setattr("time.process_time", lambda: last[0] / 2)
    yield ticks


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three categories of six small grey PNGs each."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for category, level in (("dark", 30), ("mid", 128), ("light", 220)):
        (root / category).mkdir()
        for i in range(6):
            pixels = np.clip(rng.normal(level, 20, (10, 10)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / category / f"{i}.png")
    return root


def test_step_timer_times_only_the_steps_after_the_warm_up(
    bench: ModuleType, fake_clock: list[float]
) -> None:
    # Given a timer with 2 warm-up and 3 timed steps, and steps that end at these clock readings
    timer = bench.StepTimer(warmup=2, timed=3)
    fake_clock.extend([10.0, 11.0, 11.5, 12.5, 12.7, 50.0])  # steps 1..6; step 6 is past the window
    # When the loop reports each step
    for steps_done in range(1, 7):
        timer(steps_done)
    # Then the window runs from the end of step 2 to the end of step 5: 3 steps in 1.7 s
    assert timer.done
    assert timer.seconds == pytest.approx(1.7)
    assert timer.steps_per_s == pytest.approx(3 / 1.7)
    assert timer.step_seconds == pytest.approx([0.5, 1.0, 0.2])
    assert timer.median_steps_per_s == pytest.approx(1 / 0.5)
    assert timer.cpu_ms_per_step == pytest.approx(1.7 / 2 / 3 * 1000)


def test_step_timer_refuses_an_unfinished_window_and_empty_settings(
    bench: ModuleType, fake_clock: list[float]
) -> None:
    # Given a run that stopped inside the timed window
    timer = bench.StepTimer(warmup=1, timed=5)
    fake_clock.extend([1.0, 2.0])
    timer(1)
    timer(2)
    # Then asking for its rate says so, instead of returning a number
    assert not timer.done
    with pytest.raises(RuntimeError, match="did not complete"):
        _ = timer.steps_per_s
    with pytest.raises(ValueError):
        bench.StepTimer(warmup=0, timed=5)


def test_timed_steps_cover_the_target_window(bench: ModuleType) -> None:
    # 100 steps/s for 30 s, with a 10% margin; never fewer than 10 steps
    assert bench.timed_steps_for(100.0, 30.0) == 3300
    assert bench.timed_steps_for(0.05, 30.0) == 10


def _variant(bench: ModuleType, name: str, workers: int, steps_per_s: float) -> object:
    return bench.VariantResult(
        name=name,
        workers=workers,
        threads=1,
        omp_num_threads="1",
        batch=4,
        timed_steps=100,
        window_s=100 / steps_per_s,
        steps_per_s=steps_per_s,
        median_steps_per_s=steps_per_s,
        cpu_ms_per_step=1000 / steps_per_s,
        tree_cpu_ms_per_step=1100 / steps_per_s,
        nice=10,
        startup_s=5.0,
        wall_s=40.0,
        load_before=1.0,
        load_after=1.0,
    )


def test_summary_computes_overhead_against_both_plain_runs_and_scaling(bench: ModuleType) -> None:
    # Given plain runs at 100 and 90 steps/s, the plain loop in a Ray process at 80 and 100,
    # Ray with 1 worker at 90, with 2 workers at 60 steps/s
    results = [
        _variant(bench, f"{bench.PLAIN} (before)", 1, 100.0),
        _variant(bench, f"{bench.RAY_TASK_PLAIN} (before)", 1, 80.0),
        _variant(bench, bench.RAY_1, 1, 90.0),
        _variant(bench, f"{bench.RAY_TASK_PLAIN} (after)", 1, 100.0),
        _variant(bench, bench.RAY_2, 2, 60.0),
        _variant(bench, f"{bench.PLAIN} (after)", 1, 90.0),
    ]
    # When the summary is made
    lines = bench.summary_lines(results, ray_init_s=12.0)
    text = "\n".join(lines)
    # Then the reference is the mean plain rate (95), the overhead 1 - 90/95, and 2 workers push
    # 60 × 8 = 480 images/s against 90 × 4 = 360: 1.33×
    assert bench.plain_reference(results) == pytest.approx(95.0)
    assert f"overhead of {bench.RAY_1}: +5.3% vs plain" in text
    # (CPU time per step: plain 10 and 11.1 ms, Ray 11.1 ms: 1 - 10.56 / 11.1 = +5.0%)
    assert "by CPU time per step: +5.0%" in text
    assert "480 images/s = 1.33 × 1 Ray worker" in text
    # And against the control (the plain loop in a Ray process, mean 90 steps/s) Ray Train costs nothing
    assert (
        f"plain loop in a Ray worker process: 90.00 steps/s; overhead of {bench.RAY_1} against it: +0.0%"
        in text
    )
    assert "ray.init): 12.0 s" in text
    assert bench.overhead(95.0, 100.0) < 0  # faster than the reference is a negative overhead
    report = bench.markdown_report(results, 12.0, {"preset": "tiny"})
    assert report.count(f"| {bench.RAY_2} | 2 × 1 | 1 | 10 |") == 1 and "- preset: tiny" in report


def test_tree_cpu_counts_the_cpu_time_of_child_processes(bench: ModuleType) -> None:
    # Given a child process that burns 0.5 s of CPU, then waits
    burn = (
        "import time, sys\nwhile time.process_time() < 0.5: pass\nprint('done', flush=True)\nsys.stdin.read()"
    )
    before = bench.tree_cpu_seconds(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        # When the benchmark's process tree is measured while the child is alive
        after = bench.tree_cpu_seconds(os.getpid())
    finally:
        child.communicate("")
    # Then the child's CPU seconds are in it (this process's own are too, hence only a lower bound; /proc counts
    # in clock ticks, and 0.3 s burnt once read as 0.29 s, so the bound leaves a few ticks of slack)
    assert after - before >= 0.45


def test_plain_loop_trains_the_preset_and_reports_every_step(bench: ModuleType, image_folder: Path) -> None:
    # Given the tiny preset on a small folder of images, in memory
    data = open_dataset(str(image_folder), resolution=8, channels=1)
    assert isinstance(data, TrainingData)
    seen: list[tuple[int, int]] = []
    threads = torch.get_num_threads()
    # When the benchmark's plain loop runs 5 steps with 1 torch thread
    try:
        bench.plain_loop("tiny", data, 1, 5, lambda done: seen.append((done, torch.get_num_threads())))
    finally:
        torch.set_num_threads(threads)
    # Then every step was reported, in order, and each ran with the thread count it was given
    assert seen == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]


def test_run_worker_calls_on_step_after_each_step_and_its_checkpoint(
    image_folder: Path, tmp_path: Path
) -> None:
    # Given a 3-step run of the real per-rank loop that checkpoints at step 2
    store_url = (tmp_path / "objects").as_uri()
    store = open_store(store_url)
    request = TrainRequest(
        preset="tiny",
        data=str(image_folder),
        steps=3,
        out_url=store_url,
        name="tiny",
        run="hook",
        checkpoint_every=2,
    )
    calls: list[tuple[int, bool]] = []

    def on_step(steps_done: int) -> None:
        calls.append((steps_done, store.exists("models/tiny/hook/checkpoint-00000002.pt")))

    # When it runs with a step hook
    run_worker(request, log=lambda _line: None, on_step=on_step)
    # Then the hook saw steps 1, 2, 3, and step 2's checkpoint was already written when step 2 was reported
    assert calls == [(1, False), (2, True), (3, True)]


def test_seed_global_rng_leaves_the_cpu_generator_as_torch_manual_seed_does() -> None:
    # Given the per-step seeding of run_worker, which replaced torch.manual_seed (about 1 ms a call on CPU torch)
    saved = torch.get_rng_state()
    try:
        # When a step's seed is set either way
        seed_global_rng(12345, torch.device("cpu"))
        ours = (torch.rand(4), torch.randn(3), torch.randint(0, 10, (5,)))
        torch.manual_seed(12345)
        theirs = (torch.rand(4), torch.randn(3), torch.randint(0, 10, (5,)))
    finally:
        torch.set_rng_state(saved)
    # Then the CPU draws that follow are the same, so runs and resumes stay bit-identical to before
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
