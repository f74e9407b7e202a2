"""Training step rate: a plain PyTorch loop vs Ray Train `TorchTrainer` with 1 worker, and with 2 workers.

    nice -n 10 .venv/bin/python bench/bench_train.py --preset tiny --threads 1 --target-seconds 30

One run, one preset, one batch size (the preset's, per worker), one data pipeline: Fashion-MNIST in memory
as uint8 tensors (`models.data.open_dataset`), a float batch made per step with `TrainingData.batch`.
Every variant runs `--warmup-steps` steps, then N timed steps (the same N for all; by default N is picked
from a calibration run of the plain loop so that its window lasts `--target-seconds`). The step clock is
`StepTimer`, called at the end of each step in every variant; in the Ray variants it runs inside the
worker, so Ray's start-up is not in the step rate (it is reported on its own).

Variants, in this order:

1. `plain (before)`: the loop written plainly below — the project's D step, G step, EMA and losses
   (`models.steps`), no Ray, no DDP, no per-step seeding, no checkpoints.
2. `run_worker (no Ray)`: the project's per-rank loop `models.training.run_worker`, called in this process.
   The difference to 1 is the loop's own bookkeeping (per-step seeds, batch indices, history).
3. `Ray task, plain loop (before)`: the plain loop of 1 in a Ray worker process (a plain Ray task): a
   control, because on the shared development box a Ray worker process ran the *same* plain loop up to
   2× faster than this process did (less CPU per step too), which would hide any cost of Ray Train.
4. `Ray Train, 1 worker`: `models.training.fit_with_ray` — the real `TorchTrainer` and
   `train_loop_per_worker` — on a local Ray cluster started here.
5. `Ray task, plain loop (after)`: the control again.
6. `Ray Train, 2 workers`: the same with 2 workers (DDP over gloo); each takes `batch` images per step, so
   the global batch is 2 × batch.
7. `plain (after)`: the plain loop again, after Ray is shut down, to bracket any change of machine load.

Fairness: each variant sets `torch.set_num_threads(--threads)` itself — inside the Ray worker too, since Ray
sets OMP_NUM_THREADS from the worker's CPU resources (1 per worker here) — and the threads each variant
actually ran with are recorded. Checkpoints happen only after the timed window (the run has one extra step),
unless `--checkpoint-every` puts some inside it. The overhead is 1 − (Ray 1 worker) / (plain), against the
mean of the two plain runs, and against the mean of the two controls; each also by CPU time per step
(the training process's own CPU seconds, which depend much less on what else runs on the machine).
Results: stdout, `report.md`, `train.png` and `results.json` in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.build import build_discriminator, build_generator  # noqa: E402
from models.config import get_preset, with_categories  # noqa: E402
from models.data.dataset import TrainingData, open_dataset  # noqa: E402
from models.ema import ema_decay_at, make_ema, update_ema  # noqa: E402
from models.steps import discriminator_step, draw_noise, generator_step, make_optimizers  # noqa: E402

RAY_CONTROLLER_CPUS = 1  # what `catalogan train` adds to the cluster beyond one CPU per worker
PLAIN, DIRECT, RAY_1, RAY_2 = "plain", "run_worker (no Ray)", "Ray Train, 1 worker", "Ray Train, 2 workers"
RAY_TASK_PLAIN = (
    "Ray task, plain loop"  # the plain loop in a Ray worker process: same process kind as Ray Train's
)


@dataclass
class StepTimer:
    """Called with the number of steps done at the end of every step; times steps warmup+1 … warmup+timed."""

    warmup: int
    timed: int
    first_step_done_at: float | None = None  # time.time() (comparable across processes) after step 1
    window_start: float | None = None  # time.perf_counter() at the end of step `warmup`
    window_end: float | None = None  # … and at the end of step `warmup + timed`
    step_seconds: list[float] = field(default_factory=list)  # each timed step's duration
    last_call: float | None = None  # time.perf_counter() of the previous call
    cpu_start: float = 0.0  # time.process_time() (this process, all threads) at the window's start …
    cpu_end: float = 0.0  # … and end
    tree_pid: int | None = None  # when set: also the CPU time of this process and all its descendants
    tree_cpu_start: float = 0.0
    tree_cpu_end: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.timed < 1:
            raise ValueError("warm-up and timed steps must both be at least 1")

    def __call__(self, steps_done: int) -> None:
        now = time.perf_counter()
        if self.first_step_done_at is None:
            self.first_step_done_at = time.time()
        if steps_done == self.warmup:
            self.window_start, self.cpu_start = now, time.process_time()
            if self.tree_pid is not None:
                self.tree_cpu_start = tree_cpu_seconds(self.tree_pid)
        elif self.warmup < steps_done <= self.warmup + self.timed and self.last_call is not None:
            self.step_seconds.append(now - self.last_call)
            if steps_done == self.warmup + self.timed:
                self.window_end, self.cpu_end = now, time.process_time()
                if self.tree_pid is not None:
                    self.tree_cpu_end = tree_cpu_seconds(self.tree_pid)
        self.last_call = now

    @property
    def done(self) -> bool:
        """Whether the whole timed window has run."""
        return self.window_start is not None and self.window_end is not None

    @property
    def seconds(self) -> float:
        """Length of the timed window."""
        if self.window_start is None or self.window_end is None:
            raise RuntimeError(
                f"the timed window did not complete (warm-up {self.warmup}, timed {self.timed})"
            )
        return self.window_end - self.window_start

    @property
    def steps_per_s(self) -> float:
        """Timed steps per second of the window."""
        return self.timed / self.seconds

    @property
    def cpu_ms_per_step(self) -> float:
        """CPU time of the loop's process per timed step, in ms: the work done, whatever else ran."""
        self.seconds  # noqa: B018 - raises when the window is incomplete
        return (self.cpu_end - self.cpu_start) * 1000.0 / self.timed

    @property
    def tree_cpu_ms_per_step(self) -> float:
        """CPU time of `tree_pid`'s whole process tree per timed step, in ms (NaN without a tree)."""
        self.seconds  # noqa: B018 - raises when the window is incomplete
        if self.tree_pid is None:
            return math.nan
        return (self.tree_cpu_end - self.tree_cpu_start) * 1000.0 / self.timed

    @property
    def median_steps_per_s(self) -> float:
        """1 / the median timed step: less sensitive than the window to other processes taking the CPU."""
        return 1.0 / statistics.median(self.step_seconds)


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds used so far by a process and all its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            values = stat.read_text().rsplit(")", 1)[1].split()  # the fields after "pid (comm)"
        except OSError:
            continue  # the process ended
        pid = int(stat.parent.name)
        parents[pid], ticks[pid] = int(values[1]), int(values[11]) + int(values[12])  # ppid, utime + stime
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


@dataclass
class VariantResult:
    """One variant's measurement."""

    name: str
    workers: int
    threads: int  # torch intra-op threads per worker, as seen by torch inside the loop
    omp_num_threads: str  # OMP_NUM_THREADS in the loop's process ("" when unset)
    batch: int  # images per step per worker
    timed_steps: int
    window_s: float
    steps_per_s: float
    median_steps_per_s: float  # 1 / median step duration
    cpu_ms_per_step: float  # CPU time of the training process per step (the slowest rank's)
    tree_cpu_ms_per_step: float  # CPU time of the benchmark's whole process tree (Ray's processes included)
    nice: int  # the training process's niceness
    startup_s: float  # from the call that starts it to the end of its first step (that step included)
    wall_s: float  # the whole call, start-up and the final checkpoint included
    load_before: float  # 1-minute load average before and after
    load_after: float

    @property
    def images_per_s(self) -> float:
        """Real images per second over all workers (global batch × steps/s)."""
        return self.steps_per_s * self.batch * self.workers


def overhead(reference_steps_per_s: float, steps_per_s: float) -> float:
    """1 − rate / reference: the fraction of the reference's step rate lost (negative when faster)."""
    return 1.0 - steps_per_s / reference_steps_per_s


def scaling(one: VariantResult, many: VariantResult) -> float:
    """Images/s of `many` over images/s of `one` (2.0 would be perfect for 2 workers vs 1)."""
    return many.images_per_s / one.images_per_s


def timed_steps_for(calibration_steps_per_s: float, target_seconds: float) -> int:
    """Steps that make a window of about `target_seconds` at the calibrated rate (10% margin, at least 10)."""
    return max(10, math.ceil(round(calibration_steps_per_s * target_seconds * 1.1, 6)))


def plain_reference(results: list[VariantResult]) -> float:
    """Mean steps/s of the plain runs (before and after)."""
    return statistics.fmean(r.steps_per_s for r in results if r.name.startswith(PLAIN))


def process_settings() -> dict[str, Any]:
    """What decides this process's speed besides the code: torch threads, OMP_NUM_THREADS, niceness."""
    return {
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "nice": os.nice(0),
    }


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------------------------- variants


def plain_loop(
    preset_name: str, data: TrainingData, threads: int, steps: int, on_step: Callable[[int], None]
) -> None:
    """The loop a user would write: shuffled batches, D step, G step, EMA. No Ray, no DDP, no checkpoints."""
    torch.set_num_threads(threads)
    preset = get_preset(preset_name)
    model, train = with_categories(preset.model, data.categories), preset.train
    torch.manual_seed(train.seed)
    generator, discriminator = build_generator(model), build_discriminator(model)
    generator_ema = make_ema(generator)
    optimizer_g, optimizer_d = make_optimizers(generator, discriminator, train)
    noise_source = torch.Generator().manual_seed(train.seed)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(train.seed))
    device = torch.device("cpu")
    batch = train.batch_size
    for step in range(steps):
        start = step * batch % (len(data) - batch + 1)
        real, labels = data.batch(order[start : start + batch], device)  # (B, C, R, R), (B,)
        noise = draw_noise(model, batch, noise_source, device)
        discriminator_step(generator, discriminator, optimizer_d, real, labels, noise, train)
        generator_step(generator, discriminator, optimizer_g, noise, train)
        update_ema(generator_ema, generator, ema_decay_at(step, train.ema_decay, train.ema_start_step))
        on_step(step + 1)


class TimedTrainLoop:
    """Ray Train's per-worker function for the benchmark: the real `train_loop_per_worker`, timed.

    Sets the torch thread count, runs `models.training.train_loop_per_worker` with a `StepTimer`, and
    writes the timer and the threads it saw to `<folder>/<tag>-rank<r>.json` once training is over.
    """

    def __init__(self, folder: Path, tag: str, threads: int, warmup: int, timed: int, tree_pid: int) -> None:
        self.folder, self.tag, self.threads, self.warmup, self.timed = folder, tag, threads, warmup, timed
        self.tree_pid = tree_pid  # the benchmark's process: Ray's processes are its descendants

    def __call__(self, config: dict[str, Any]) -> None:
        import ray.train

        from models.training import train_loop_per_worker

        torch.set_num_threads(self.threads)
        timer = StepTimer(self.warmup, self.timed, tree_pid=self.tree_pid)
        train_loop_per_worker(config, on_step=timer)
        rank = ray.train.get_context().get_world_rank()
        record = {**asdict(timer), "seconds": timer.seconds, **process_settings()}
        (self.folder / f"{self.tag}-rank{rank}.json").write_text(json.dumps(record))


def train_request(args: argparse.Namespace, store_url: str, run: str, workers: int, steps: int) -> Any:
    """The `TrainRequest` of a run-worker or Ray variant: checkpoints only after the window by default."""
    from models.training import TrainRequest

    return TrainRequest(
        preset=args.preset,
        data=args.data,
        steps=steps,
        out_url=store_url,
        name="bench",
        run=run,
        workers=workers,
        checkpoint_every=args.checkpoint_every or steps,
    )


def measure_plain(args: argparse.Namespace, data: TrainingData, name: str, timed: int) -> VariantResult:
    """Variant 1 / 5: the plain loop in this process."""
    load_before, started = load_average(), time.time()
    timer = StepTimer(args.warmup_steps, timed, tree_pid=os.getpid())
    plain_loop(args.preset, data, args.threads, args.warmup_steps + timed, timer)
    return _result(name, 1, process_settings(), args, timer, started, time.time(), load_before)


def timer_from_record(record: dict[str, Any]) -> StepTimer:
    """A `StepTimer` back from its `asdict` form (other keys ignored)."""
    return StepTimer(**{f.name: record[f.name] for f in fields(StepTimer)})


def plain_in_ray_task(args: argparse.Namespace, timed: int, tree_pid: int) -> dict[str, Any]:
    """The plain loop in a Ray worker process (a plain Ray task: no Ray Train, no DDP); runs in that process."""
    preset = get_preset(args.preset)
    data = open_dataset(args.data, preset.model.resolution, preset.model.channels)
    timer = StepTimer(args.warmup_steps, timed, tree_pid=tree_pid)
    plain_loop(args.preset, data, args.threads, args.warmup_steps + timed, timer)
    return {**asdict(timer), **process_settings()}


def measure_plain_in_ray(args: argparse.Namespace, name: str, timed: int) -> VariantResult:
    """The control variant: is a Ray worker process itself faster or slower than this one?"""
    import ray

    load_before, started = load_average(), time.time()
    record = ray.get(ray.remote(num_cpus=1)(plain_in_ray_task).remote(args, timed, os.getpid()))
    return _result(name, 1, record, args, timer_from_record(record), started, time.time(), load_before)


def measure_direct(args: argparse.Namespace, store_url: str, timed: int) -> VariantResult:
    """Variant 2: `run_worker` in this process (it loads the data itself, as a Ray worker does)."""
    from models.training import run_worker

    load_before, started = load_average(), time.time()
    torch.set_num_threads(args.threads)
    timer = StepTimer(args.warmup_steps, timed, tree_pid=os.getpid())
    steps = args.warmup_steps + timed + 1  # the final checkpoint falls after the window
    run_worker(train_request(args, store_url, "direct", 1, steps), log=lambda _line: None, on_step=timer)
    return _result(DIRECT, 1, process_settings(), args, timer, started, time.time(), load_before)


def measure_ray(
    args: argparse.Namespace, store_url: str, scratch: Path, workers: int, timed: int
) -> VariantResult:
    """Variants 3 and 4: `fit_with_ray` with `workers` workers; the step clock runs in each worker."""
    from models.training import fit_with_ray

    tag = f"ray{workers}"
    steps = args.warmup_steps + timed + 1
    loop = TimedTrainLoop(scratch, tag, args.threads, args.warmup_steps, timed, os.getpid())
    load_before, started = load_average(), time.time()
    fit_with_ray(train_request(args, store_url, tag, workers, steps), scratch / "ray", train_loop=loop)
    finished = time.time()
    ranks = [json.loads((scratch / f"{tag}-rank{rank}.json").read_text()) for rank in range(workers)]
    # The slowest rank sets the pace (DDP waits for it); all ranks did the same number of steps.
    slowest = max(ranks, key=lambda record: record["seconds"])
    timer = timer_from_record({**slowest, "first_step_done_at": min(r["first_step_done_at"] for r in ranks)})
    name = RAY_1 if workers == 1 else RAY_2 if workers == 2 else f"Ray Train, {workers} workers"
    return _result(name, workers, slowest, args, timer, started, finished, load_before)


def _result(
    name: str,
    workers: int,
    settings: dict[str, Any],
    args: argparse.Namespace,
    timer: StepTimer,
    started: float,
    finished: float,
    load_before: float,
) -> VariantResult:
    assert timer.first_step_done_at is not None
    return VariantResult(
        name=name,
        workers=workers,
        threads=int(settings["threads"]),
        omp_num_threads=str(settings["omp_num_threads"]),
        batch=get_preset(args.preset).train.batch_size,
        timed_steps=timer.timed,
        window_s=timer.seconds,
        steps_per_s=timer.steps_per_s,
        median_steps_per_s=timer.median_steps_per_s,
        cpu_ms_per_step=timer.cpu_ms_per_step,
        tree_cpu_ms_per_step=timer.tree_cpu_ms_per_step,
        nice=int(settings["nice"]),
        startup_s=timer.first_step_done_at - started,
        wall_s=finished - started,
        load_before=load_before,
        load_after=load_average(),
    )


# ---------------------------------------------------------------------------------------------- report


def variant_line(r: VariantResult) -> str:
    """One variant's figures on one line."""
    return (
        f"{r.name:<22} {r.steps_per_s:8.2f} steps/s (median step: {r.median_steps_per_s:.2f})  "
        f"{r.images_per_s:9.0f} images/s  {r.cpu_ms_per_step:6.1f} CPU ms/step "
        f"({r.tree_cpu_ms_per_step:.1f} with all processes)  "
        f"({r.timed_steps} steps in {r.window_s:.1f} s; {r.workers} × {r.threads} threads, "
        f"OMP_NUM_THREADS={r.omp_num_threads or 'unset'}, nice {r.nice}; start-up {r.startup_s:.1f} s, wall {r.wall_s:.1f} s; "
        f"load {r.load_before:.1f} → {r.load_after:.1f})"
    )


def summary_lines(results: list[VariantResult], ray_init_s: float) -> list[str]:
    """The figures as printed: one line per variant, then overhead, scaling and start-up."""
    reference = plain_reference(results)
    plains = [r for r in results if r.name.startswith(PLAIN)]
    median_reference = statistics.fmean(r.median_steps_per_s for r in plains)
    cpu_reference = statistics.fmean(r.cpu_ms_per_step for r in plains)
    tree_reference = statistics.fmean(r.tree_cpu_ms_per_step for r in plains)
    by_name = {r.name: r for r in results}
    lines = [variant_line(r) for r in results]
    lines.append(
        f"plain reference: {reference:.2f} steps/s (mean of {' and '.join(f'{r.steps_per_s:.2f}' for r in plains)})"
    )
    controls = [r for r in results if r.name.startswith(RAY_TASK_PLAIN)]
    if controls and RAY_1 in by_name:
        control = statistics.fmean(r.steps_per_s for r in controls)
        control_cpu = statistics.fmean(r.cpu_ms_per_step for r in controls)
        control_tree = statistics.fmean(r.tree_cpu_ms_per_step for r in controls)
        ray_1 = by_name[RAY_1]
        lines.append(
            f"plain loop in a Ray worker process: {control:.2f} steps/s; overhead of {RAY_1} against it: "
            f"{overhead(control, ray_1.steps_per_s):+.1%} "
            f"(by CPU time per step: {overhead(ray_1.cpu_ms_per_step, control_cpu):+.1%}, "
            f"with all processes: {overhead(ray_1.tree_cpu_ms_per_step, control_tree):+.1%})"
        )
    for name in (DIRECT, RAY_1):
        if name in by_name:
            lines.append(
                f"overhead of {name}: {overhead(reference, by_name[name].steps_per_s):+.1%} vs plain "
                f"(by median step: {overhead(median_reference, by_name[name].median_steps_per_s):+.1%}; "
                f"by CPU time per step: {overhead(by_name[name].cpu_ms_per_step, cpu_reference):+.1%}, "
                f"with all processes: {overhead(by_name[name].tree_cpu_ms_per_step, tree_reference):+.1%})"
            )
    if RAY_1 in by_name and RAY_2 in by_name:
        one, two = by_name[RAY_1], by_name[RAY_2]
        lines.append(
            f"2 workers: {two.images_per_s:.0f} images/s = {scaling(one, two):.2f} × 1 Ray worker "
            f"({two.steps_per_s / one.steps_per_s:.2f} × its steps/s at twice the global batch)"
        )
    lines.append(f"Ray cluster start (ray.init): {ray_init_s:.1f} s")
    return lines


def markdown_report(results: list[VariantResult], ray_init_s: float, meta: dict[str, Any]) -> str:
    """The report: the setup, a table per variant and the summary lines."""
    rows = "\n".join(
        f"| {r.name} | {r.workers} × {r.threads} | {r.omp_num_threads or 'unset'} | {r.nice} | "
        f"{r.batch * r.workers} | {r.timed_steps} | {r.window_s:.1f} | {r.steps_per_s:.2f} | "
        f"{r.median_steps_per_s:.2f} | {r.cpu_ms_per_step:.1f} | {r.tree_cpu_ms_per_step:.1f} | {r.images_per_s:.0f} | {r.startup_s:.1f} | "
        f"{r.wall_s:.1f} |"
        for r in results
    )
    setup = "\n".join(f"- {key}: {value}" for key, value in meta.items())
    summary = "\n".join(summary_lines(results, ray_init_s))
    return (
        "# Training step rate: plain loop vs Ray Train\n\n"
        f"{setup}\n\n"
        "| variant | workers × threads | OMP_NUM_THREADS | nice | global batch | timed steps | window s | "
        "steps/s | steps/s by median step | CPU ms/step | CPU ms/step, all processes | images/s | start-up s | "
        "wall s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n```\n{summary}\n```\n"
    )


def chart_png(results: list[VariantResult], path: Path, title: str) -> None:
    """Horizontal bars per variant: steps/s, real images/s, and CPU ms per step (training process / all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    rows = range(len(results))
    fig, (rate, images, cpu) = plt.subplots(1, 3, figsize=(14, 0.5 * len(results) + 1.8), sharey=True)
    rate.barh(rows, [r.steps_per_s for r in results], color="tab:blue")
    rate.set_xlabel("steps/s (per worker, over the window)")
    images.barh(rows, [r.images_per_s for r in results], color="tab:orange")
    images.set_xlabel("real images/s (all workers)")
    cpu.barh(rows, [r.tree_cpu_ms_per_step for r in results], color="lightgray", label="all processes")
    cpu.barh(
        rows, [r.cpu_ms_per_step for r in results], color="tab:green", height=0.5, label="training process"
    )
    cpu.set_xlabel("CPU ms per step")
    cpu.legend(fontsize=7)
    rate.set_yticks(list(rows), names, fontsize=8)
    rate.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    """Parse arguments, run the variants, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny | fashion-cgan | seed-dcgan | photo-cgan-64")
    parser.add_argument(
        "--data", default="fashion-mnist", help="a data spec, as for `catalogan train --data`"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every worker")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: from a calibration run)")
    parser.add_argument("--target-seconds", type=float, default=30.0, help="timed window when --steps is 0")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="0: one checkpoint, after the window")
    parser.add_argument("--no-two-workers", action="store_true", help="skip the 2-worker variant")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "train")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")  # as `catalogan train` does

    started = time.time()
    data = open_dataset(
        args.data, get_preset(args.preset).model.resolution, get_preset(args.preset).model.channels
    )
    print(f"data: {args.data}, {len(data)} images, loaded in {time.time() - started:.1f} s", flush=True)
    timed = args.steps
    if not timed:
        # The plain loop for 2 × warm-up steps; the rate of the second half picks the timed steps.
        calibration = StepTimer(args.warmup_steps, args.warmup_steps)
        plain_loop(args.preset, data, args.threads, args.warmup_steps * 2, calibration)
        rate = calibration.steps_per_s
        timed = timed_steps_for(rate, args.target_seconds)
        print(f"calibration: plain loop {rate:.2f} steps/s -> {timed} timed steps", flush=True)

    results: list[VariantResult] = []

    def done(result: VariantResult) -> None:
        results.append(result)
        print(variant_line(result), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        scratch = Path(folder)
        store_url = (scratch / "objects").as_uri()
        done(measure_plain(args, data, f"{PLAIN} (before)", timed))
        done(measure_direct(args, store_url, timed))
        import ray

        init_started = time.time()
        workers = 1 if args.no_two_workers else 2
        ray.init(num_cpus=workers + RAY_CONTROLLER_CPUS, include_dashboard=False, log_to_driver=False)
        ray_init_s = time.time() - init_started
        try:
            done(measure_plain_in_ray(args, f"{RAY_TASK_PLAIN} (before)", timed))
            done(measure_ray(args, store_url, scratch, 1, timed))
            done(measure_plain_in_ray(args, f"{RAY_TASK_PLAIN} (after)", timed))
            if not args.no_two_workers:
                done(measure_ray(args, store_url, scratch, 2, timed))
        finally:
            ray.shutdown()
        done(measure_plain(args, data, f"{PLAIN} (after)", timed))

    meta = {
        "command": "python " + " ".join(sys.argv),
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "preset": f"{args.preset} (batch {get_preset(args.preset).train.batch_size} per worker)",
        "data": f"{args.data} ({len(data)} images, uint8 in memory)",
        "warm-up steps": args.warmup_steps,
        "timed steps": timed,
        "checkpoint every": args.checkpoint_every or "after the window only",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    print()
    for line in summary_lines(results, ray_init_s):
        print(line)
    (args.out / "report.md").write_text(markdown_report(results, ray_init_s, meta))
    (args.out / "results.json").write_text(
        json.dumps(
            {"meta": meta, "ray_init_s": ray_init_s, "results": [asdict(r) for r in results]}, indent=2
        )
    )
    chart_png(results, args.out / "train.png", f"{args.preset}: training steps/s, plain loop vs Ray Train")
    print(f"report: {args.out / 'report.md'}, chart: {args.out / 'train.png'}")


if __name__ == "__main__":
    main()
