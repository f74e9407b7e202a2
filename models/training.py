"""GAN training: a plain per-rank loop (`run_worker`) and the Ray Train `TorchTrainer` that runs it on W workers.

Per step, every rank: reads its own slice of a global batch whose indices are a deterministic function of
(seed, step); draws its noise from a generator seeded by (seed, step, rank); does one D step then one G step
through its own DDP wrappers of G and D; updates the EMA of G (identically on every rank, since DDP keeps
the weights identical). Every `checkpoint_every` steps rank 0 writes a full-state checkpoint, a loss-curve
PNG and a sample grid PNG to the object store under `models/<name>/<run>/`, and reports the checkpoint to
Ray Train. Because nothing random depends on process history, `--resume` from a checkpoint continues
exactly as if the run had never stopped.

The request and the rank's state live in `models.training_state`; what rank 0 records besides checkpoints
(history lines, periodic evaluation) in `models.run_recording`. Rank 0 also keeps the run's `history.jsonl` (losses and throughput every `log_every` steps, and with
`eval_every` the evaluator's FID_fm and per-category accuracy of a few hundred samples, the latest
`samples.png`, and the best-so-far generator): the driver and `catalogan train show --follow` read progress
from there, not from the worker's output (see docs/training.md, "What a run records").
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import random
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from db.errors import ObjectNotFoundError
from db.storage import ObjectStore, open_store
from models.checkpoint import (
    carries_discriminator,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    generator_only,
    sha256_hex,
)
from models.config import get_preset
from models.data.dataset import FASHION_MNIST, open_dataset
from models.ema import ema_decay_at, update_ema
from models.errors import DataError, TrainingError, TrainingInputError
from models.plots import loss_curve_png, sample_grid_png
from models.progress_view import progress_text
from models.run_recording import (
    ProgressRecorder,
    check_evaluable,
    evaluate_step,
    write_evaluation_artifacts,
)
from models.runs import LATEST as LATEST  # re-exported: callers import these from here
from models.runs import (
    LOSS_PNG,
    SAMPLES_PNG,
    read_run_record,
)
from models.runs import run_prefix as run_prefix
from models.steps import discriminator_step, draw_noise, generator_loss, generator_step
from models.training_state import RunResult as RunResult  # re-exported: callers import these from here
from models.training_state import TrainRequest as TrainRequest
from models.training_state import WorkerState as WorkerState
from models.training_state import (
    apply_init,
    config_differences,
    init_state,
    load_state,
    sample_images,
    state_payload,
)

GENERATOR_FILE = "generator.pt"
INIT_FILE = "init-generator.pt"  # a run's pinned copy of its --init-from checkpoint
PRECISIONS = ("fp32", "bf16")
MASK_63_BITS = (1 << 63) - 1

ReportFn = Callable[[dict[str, Any], bytes | None], None]
StepFn = Callable[[int], None]  # called with the number of steps done, e.g. to time them
TrainLoopFn = Callable[[dict[str, Any]], None]  # Ray Train's train_loop_per_worker


def new_run_id() -> str:
    """A sortable run id from the current UTC time."""
    return dt.datetime.now(dt.UTC).strftime("run-%Y%m%d-%H%M%S")


def run_id_problem(run: str) -> str | None:
    """Why `run` cannot be a run id, or None: a run id is one folder of object keys (`models/<name>/<run>/`),
    under the rule of a model name, so `train ls` lists the run and `train show NAME/RUN` finds it again."""
    from db.model_versions import MODEL_NAME_PATTERN

    if MODEL_NAME_PATTERN.fullmatch(run):
        return None
    return "a run id is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def step_seed(seed: int, step: int, rank: int, purpose: str) -> int:
    """A 63-bit seed for one (step, rank, purpose), mixed with BLAKE2b."""
    digest = hashlib.blake2b(f"{seed}:{step}:{rank}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MASK_63_BITS


@lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the data set in one epoch, a function of (seed, epoch) only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, -1, "epoch")))


def batch_indices(seed: int, step: int, n: int, global_batch: int) -> torch.Tensor:
    """Data indices of step `step`'s global batch: consecutive slices of per-epoch permutations."""
    parts: list[torch.Tensor] = []
    position = step * global_batch
    taken = 0
    while taken < global_batch:
        epoch, offset = divmod(position + taken, n)
        take = min(global_batch - taken, n - offset)
        parts.append(epoch_permutation(seed, epoch, n)[offset : offset + take])
        taken += take
    return torch.cat(parts)


def rank_shard(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of a global batch."""
    per_rank = len(indices) // world
    return indices[rank * per_rank : (rank + 1) * per_rank]


def find_latest(store: ObjectStore, name: str, run: str) -> dict[str, Any] | None:
    """The run's `latest.json` (step, checkpoint key, …), or None when it has no checkpoint yet."""
    try:
        return dict(json.loads(store.get(f"{run_prefix(name, run)}/{LATEST}")))
    except ObjectNotFoundError:
        return None


def latest_run(store: ObjectStore, name: str) -> str | None:
    """The run of `name` whose checkpoint was written last, or None."""
    best: tuple[str, str] | None = None
    for info in store.list(f"models/{name}/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == LATEST:
            updated = str(json.loads(store.get(info.key)).get("updated_at", ""))
            if best is None or updated > best[0]:
                best = (updated, parts[2])
    return best[1] if best else None


def write_checkpoint(
    store: ObjectStore,
    request: TrainRequest,
    state: WorkerState,
    fingerprint: str,
    final: bool,
    log: Callable[[str], None] = print,
) -> tuple[bytes, list[str], dict[str, Any]]:
    """Rank 0: the full checkpoint, loss curve and sample grid to the store; not yet `latest.json`.

    Returns the checkpoint bytes, the mode-collapse warnings of its sample grid, and the `latest.json` record
    that `write_latest` publishes once the step's history line is written (a run killed in between resumes
    from the checkpoint before and redoes that line, instead of resuming past a line it never wrote).
    """
    prefix = run_prefix(request.name, request.run)
    data = checkpoint_to_bytes(state_payload(state, request.preset, fingerprint))
    key = f"{prefix}/checkpoint-{state.step:08d}.pt"
    store.put(key, data)
    history = state.history
    title = f"{request.name} {request.run} step {state.step}"
    loss_png = loss_curve_png(history["step"], history["loss_d"], history["loss_g"], title)
    grid = sample_images(state.generator_ema, state.model.num_classes)
    samples_png = sample_grid_png(grid, state.model.categories, title)
    # The numbered pictures stay with their checkpoint; the unnumbered ones are always the latest.
    for name, png in (
        (f"loss-{state.step:08d}.png", loss_png),
        (f"samples-{state.step:08d}.png", samples_png),
        (LOSS_PNG, loss_png),
        (SAMPLES_PNG, samples_png),
    ):
        store.put(f"{prefix}/{name}", png, content_type="image/png")
    warnings = mode_collapse_warnings(grid, state.model.categories)
    latest: dict[str, Any] = {
        "step": state.step,
        "checkpoint_key": key,
        "checkpoint_sha256": sha256_hex(data),
        "preset": request.preset,
        "data_fingerprint": fingerprint,
        "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        "done": final,
        "warnings": warnings,
    }
    for warning in warnings:
        log(f"warning at step {state.step}: {warning}")
    if final:
        generator_bytes = checkpoint_to_bytes(generator_only(checkpoint_from_bytes(data)))
        store.put(f"{prefix}/{GENERATOR_FILE}", generator_bytes)
        latest.update(
            generator_key=f"{prefix}/{GENERATOR_FILE}", generator_sha256=sha256_hex(generator_bytes)
        )
    return data, warnings, latest


def write_latest(store: ObjectStore, request: TrainRequest, latest: dict[str, Any]) -> None:
    """Rank 0: point the run's `latest.json` at the checkpoint `write_checkpoint` wrote (resume reads it)."""
    key = f"{run_prefix(request.name, request.run)}/{LATEST}"
    store.put(key, json.dumps(latest, indent=2).encode(), content_type="application/json")


def mode_collapse_warnings(grid: np.ndarray, categories: tuple[str, ...]) -> list[str]:
    """The evaluator's intra-class SSIM alarm on a sample grid (rows = categories): [] when diverse."""
    from models.evaluation import diversity_alarm  # the metrics stack is only needed at checkpoints

    return diversity_alarm({category: grid[row] for row, category in enumerate(categories)})


def check_init_checkpoint(request: TrainRequest, data: bytes) -> None:
    """Raise `TrainingInputError` when the --init-from bytes are not a checkpoint or its model is not the
    preset's (categories are checked by each rank, which knows the data's). Writes nothing, so the driver
    runs it with the other checks and copies the bytes (`pin_init_checkpoint`) only once all have passed."""
    from models.errors import CheckpointError

    try:
        payload = checkpoint_from_bytes(data)
    except CheckpointError as exc:
        raise TrainingInputError(f"--init-from {request.init_from}: {exc}") from exc
    differences = config_differences(
        payload["model_config"],
        get_preset(request.preset).model.to_dict(),
        skip=("categories", "num_classes"),
    )
    if differences:
        raise TrainingInputError(
            f"--init-from {request.init_from}: its model is not the {request.preset!r} preset's ("
            + "; ".join(differences)
            + ")"
        )


def pin_init_checkpoint(store: ObjectStore, request: TrainRequest, data: bytes) -> TrainRequest:
    """Copy the --init-from checkpoint into the run's folder and record its key and sha256 in the request.

    Every rank loads that copy and checks its sha256, so a file changed or replaced after the check cannot
    reach training, and the run keeps the exact bytes it started from. The bytes are checked first
    (`check_init_checkpoint`): nothing is copied for a checkpoint the run would refuse.
    """
    check_init_checkpoint(request, data)
    key = f"{run_prefix(request.name, request.run)}/{INIT_FILE}"
    store.put(key, data)
    return dataclasses.replace(request, init_key=key, init_sha256=sha256_hex(data))


def read_init_checkpoint(store: ObjectStore, request: TrainRequest) -> dict[str, Any]:
    """The run's pinned init checkpoint, refused unless its bytes still have the recorded sha256."""
    data = store.get(request.init_key)
    if sha256_hex(data) != request.init_sha256:
        raise TrainingError(
            f"{store.uri(request.init_key)} is not the checkpoint this run pinned "
            f"(sha256 {sha256_hex(data)[:12]}…, expected {request.init_sha256[:12]}…)"
        )
    return checkpoint_from_bytes(data)


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast to bfloat16 for `bf16` (weights, gradients and optimiser state stay fp32); nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed the global RNGs a step may draw from (dropout etc.): the CPU one, and this rank's GPU's.

    Not `torch.manual_seed`: it also queues a lazy seeding of every accelerator backend that is not
    initialised, and records a Python stack for each — about 1 ms a step with CPU torch, a tenth of a
    `tiny` step (measured with `bench/bench_train.py`). The CPU generator ends up in the same state.
    """
    torch.default_generator.manual_seed(seed)
    # Python's and numpy's too (a few µs): nothing of ours draws from them, but the checkpoint records their
    # states, and seeding them per step makes those bytes a function of the step, not of the process.
    random.seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def run_worker(
    request: TrainRequest,
    *,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    report: ReportFn | None = None,
    log: Callable[[str], None] = print,
    on_step: StepFn | None = None,
) -> WorkerState:
    """Train one rank from step 0 (or the run's latest checkpoint when resuming) to `request.steps`.

    Works without Ray (world 1) and under Ray Train (a torch process group already initialised).
    Rank 0 writes `history.jsonl` every `log_every` steps (and logs the same line through `log`) and, with
    `eval_every`, evaluates G_ema every `eval_every` steps and at the last one.
    `on_step(steps_done)` runs at the end of every step, after its checkpoint and report if it had one
    (`bench/bench_train.py` times steps with it).
    """
    device = device or torch.device("cpu")
    if device.type == "cuda":
        # Fixed shapes every step: let cuDNN pick the fastest kernels once (the GPU figures assume it).
        torch.backends.cudnn.benchmark = True
    preset = get_preset(request.preset)
    if request.batch_size:
        preset = dataclasses.replace(
            preset, train=dataclasses.replace(preset.train, batch_size=request.batch_size)
        )
    seed = preset.train.seed if request.seed is None else request.seed
    store = open_store(request.out_url)
    data = open_dataset(request.data, preset.model.resolution, preset.model.channels)
    state = init_state(preset, data, seed, device)
    if request.eval_every:
        check_evaluable(state.model)
    if request.init_key and not request.resume:
        init = read_init_checkpoint(store, request)
        apply_init(state, init)
        if rank == 0:
            log(
                f"starting from {request.init_from} (sha256 {request.init_sha256[:12]}…): "
                + (
                    "G, G_ema and D go on"
                    if carries_discriminator(init)
                    else "a generator alone, so D starts fresh (a trained G with a fresh D can get worse "
                    "before it gets better; a checkpoint with its D continues the pair: docs/training.md)"
                )
            )
    if request.resume:
        latest = find_latest(store, request.name, request.run)
        if latest is None:
            raise TrainingError(
                f"nothing to resume: {store.uri(run_prefix(request.name, request.run))} has no {LATEST}"
            )
        load_state(state, checkpoint_from_bytes(store.get(latest["checkpoint_key"])))
        if rank == 0:
            log(f"resumed {request.name}/{request.run} at step {state.step}")
    channels_last = request.precision == "bf16"  # oneDNN's and cuDNN's bf16 convolutions want NHWC
    if channels_last:
        for module in (state.generator, state.generator_ema, state.discriminator):
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
    generator, discriminator = state.generator, state.discriminator
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        generator = DistributedDataParallel(state.generator, device_ids=device_ids)
        discriminator = DistributedDataParallel(state.discriminator, device_ids=device_ids)
    batch = state.train.batch_size
    recorder = ProgressRecorder(store, request, batch * world, state.step) if rank == 0 else None
    while state.step < request.steps:
        step = state.step
        seed_global_rng(step_seed(seed, step, rank, "torch"), device)  # dropout etc.: (seed, step, rank)
        indices = rank_shard(batch_indices(seed, step, len(data), batch * world), rank, world)
        real, labels = data.batch(indices, device)
        if channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        noise = draw_noise(
            state.model, batch, torch.Generator().manual_seed(step_seed(seed, step, rank, "noise")), device
        )
        with precision_context(request.precision, device):
            loss_d = discriminator_step(
                generator, discriminator, state.optimizer_d, real, labels, noise, state.train
            )
            if step < request.d_warmup_steps:
                # D alone catches up with the loaded G; G's loss is measured, not followed.
                loss_g = generator_loss(state.generator, state.discriminator, noise, state.train)
            else:
                # G's loss goes through D's bare module: D is frozen for it, so there is nothing to all-reduce.
                loss_g = generator_step(generator, state.discriminator, state.optimizer_g, noise, state.train)
        if step >= request.d_warmup_steps:
            # From an init, G_ema already holds a trained average: no warm-up that would overwrite it.
            decay = (
                state.train.ema_decay
                if request.init_key
                else ema_decay_at(step, state.train.ema_decay, state.train.ema_start_step)
            )
            update_ema(state.generator_ema, state.generator, decay)
        state.step += 1
        for key, value in (("step", state.step), ("loss_d", loss_d), ("loss_g", loss_g)):
            state.history[key].append(float(value))
        final = state.step == request.steps
        extra: dict[str, Any] = {}
        evaluate = request.eval_every > 0 and (state.step % request.eval_every == 0 or final)
        if rank == 0 and evaluate:
            evaluation = evaluate_step(state, request)
            state.evaluations.append(evaluation)
            write_evaluation_artifacts(store, request, state, data.fingerprint, evaluation)
            extra.update({k: v for k, v in evaluation.items() if k != "step"})
        checkpointed = state.step % request.checkpoint_every == 0 or final
        data_bytes, latest = None, None
        if checkpointed and rank == 0:
            data_bytes, warnings, latest = write_checkpoint(
                store, request, state, data.fingerprint, final, log
            )
            if warnings:
                extra["warnings"] = warnings
        if recorder is not None:
            recorder.add(loss_d, loss_g)
            if extra or state.step % request.log_every == 0 or final:
                log(progress_text(recorder.record(state.step, extra), request.steps))
        # The history line first, then latest.json: resuming from this checkpoint keeps the lines up to its
        # step, so each of them must be written before the checkpoint can be resumed from.
        if latest is not None:
            write_latest(store, request, latest)
        if checkpointed and report is not None:
            report({"step": state.step, "loss_d": loss_d, "loss_g": loss_g}, data_bytes)
        if on_step is not None:
            on_step(state.step)
    return state


def ray_report(metrics: dict[str, Any], checkpoint_bytes: bytes | None) -> None:
    """Report metrics to Ray Train; every rank calls it the same number of times.

    Rank 0 has already written the checkpoint to the run's object store (`write_checkpoint`), which is what
    `--resume`, the registry and the operator read. Ray Train is not given a copy: its copy went to its own run
    folder (a local temp folder by default), which nothing read, and on a multi-node cluster Ray refuses to
    persist a checkpoint from a worker node that cannot reach that folder ("Unable to set up cluster storage").
    """
    import ray.train

    ray.train.report(metrics)


def train_loop_per_worker(config: dict[str, Any], on_step: StepFn | None = None) -> None:
    """Ray Train's entry point on each worker: parse the request, find rank and device, call `run_worker`."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    request = TrainRequest.from_dict(config)
    device = ray.train.torch.get_device() if request.use_gpu else torch.device("cpu")
    if request.cpus_per_worker:
        torch.set_num_threads(
            request.cpus_per_worker
        )  # Ray sets OMP_NUM_THREADS; torch may have read it first
    run_worker(
        request,
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        device=device,
        report=ray_report,
        log=lambda _line: None,  # the driver shows progress from history.jsonl, not from worker output
        on_step=on_step,
    )


def check_evaluator_data(option: str, data: str) -> None:
    """Refuse `option` (--eval-every, --evaluate) for data whose categories are not Fashion-MNIST's: the
    evaluator measures against those ten, and would only say so after the training (`evaluate_generator`)."""
    if not data.startswith(FASHION_MNIST):
        raise TrainingInputError(
            f"{option} needs --data fashion-mnist[:/path] (the evaluator knows Fashion-MNIST's categories), "
            f"not {data!r}"
        )


def prepare_run(request: TrainRequest, store: ObjectStore) -> TrainRequest:
    """Check the request against the store: pick the run to resume, refuse to overwrite a run, or to resume
    one with another preset. Writes nothing."""
    if request.steps < 1 or request.workers < 1 or request.checkpoint_every < 1:
        raise TrainingInputError("--steps, --workers and --checkpoint-every must be at least 1")
    if request.eval_every < 0 or request.eval_samples < 1:
        raise TrainingInputError("--eval-every must be at least 0 and --eval-samples at least 1")
    if request.eval_every:
        check_evaluator_data("--eval-every", request.data)
    if request.batch_size < 0:
        raise TrainingInputError("--batch-size must be at least 1 (or 0 for the preset's)")
    problem = run_id_problem(request.run) if request.run else None
    if problem is not None:
        raise TrainingInputError(f"--run {request.run!r}: {problem}")
    if request.precision not in PRECISIONS:
        raise TrainingInputError(
            f"--precision must be one of {', '.join(PRECISIONS)}, not {request.precision!r}"
        )
    if request.d_warmup_steps < 0 or request.d_warmup_steps >= request.steps:
        raise TrainingInputError("--d-warmup-steps must be at least 0 and below --steps")
    if request.d_warmup_steps and not (request.init_from or request.resume):
        raise TrainingInputError(
            "--d-warmup-steps needs --init-from (a fresh G has nothing for D to catch up with)"
        )
    if request.init_from and request.resume:
        raise TrainingInputError(
            "--init-from starts a new run; a resumed run continues from its own checkpoint"
        )
    run = request.run
    if request.resume and not run:
        run = latest_run(store, request.name) or ""
        if not run:
            raise TrainingInputError(
                f"nothing to resume: no run of {request.name!r} under {store.uri('models/' + request.name)}"
            )
    run = run or new_run_id()
    latest = find_latest(store, request.name, run)
    if request.resume and latest is None:
        raise TrainingInputError(
            f"nothing to resume: {store.uri(run_prefix(request.name, run))} has no checkpoint"
        )
    if not request.resume and latest is not None:
        raise TrainingInputError(
            f"run {request.name}/{run} already has checkpoints; pass --resume to continue it"
        )
    record: dict[str, Any] = {}
    if request.resume:
        record = read_run_record(store, request.name, run) or {}
        # The checkpoint holds the preset's networks: another preset only fails in every rank, after Ray has
        # started and the run record has been rewritten with it.
        recorded = str((latest or {}).get("preset") or record.get("preset") or "")
        if recorded and recorded != request.preset:
            raise TrainingInputError(
                f"--preset {request.preset} differs from the run's {recorded}; a resumed run keeps its own "
                f"(pass --preset {recorded})"
            )
    if latest is not None and int(latest["step"]) >= request.steps:
        raise TrainingInputError(
            f"run {request.name}/{run} is already at step {latest['step']} ≥ --steps {request.steps}"
        )
    recipe = resumed_recipe(request, record) if request.resume else {}
    return TrainRequest.from_dict({**request.to_dict(), **recipe, "run": run})


RECIPE_FIELDS = ("init_from", "init_key", "init_sha256", "d_warmup_steps", "batch_size", "precision")


def resumed_recipe(request: TrainRequest, record: dict[str, Any]) -> dict[str, Any]:
    """The recipe fields a resumed run keeps from its record, so it continues exactly as it started.

    A value given again on the command line must match (the defaults mean "as recorded").
    """
    defaults = TrainRequest(preset="", data="", steps=1, out_url="", name="", run="")
    recipe = {key: record[key] for key in RECIPE_FIELDS if key in record}
    for key in ("d_warmup_steps", "batch_size", "precision"):
        given = getattr(request, key)
        if key in recipe and given != getattr(defaults, key) and given != recipe[key]:
            option = "--" + key.replace("_", "-")
            raise TrainingInputError(
                f"{option} {given} differs from the run's {recipe[key]}; a resumed run keeps its own"
            )
    return recipe


def fit_with_ray(
    request: TrainRequest, ray_storage: Path, train_loop: TrainLoopFn = train_loop_per_worker
) -> RunResult:
    """Run the request on a Ray `TorchTrainer` with W workers; return where the artefacts are.

    `train_loop` is what each worker runs: `train_loop_per_worker`, or a wrapper of it (the benchmark's).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    store = open_store(request.out_url)
    request = prepare_run(request, store)
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config=request.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=request.workers,
            use_gpu=request.use_gpu,
            resources_per_worker={"CPU": max(1, request.cpus_per_worker)},
        ),
        run_config=RunConfig(
            name=f"{request.name}-{request.run}",
            storage_path=str(ray_storage.resolve()),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train raises its own wrappers around a worker's error
        raise run_failure(request, exc) from exc
    if result.error is not None:
        raise run_failure(request, result.error) from result.error
    return run_result(store, request)


def run_failure(request: TrainRequest, exc: BaseException) -> TrainingError:
    """A failed fit as one line. What the workers find wrong with the arguments — unreadable `--data`, an
    `--init-from` or resumed checkpoint of another model — is a `TrainingInputError` naming the option (only a
    rank, which loads the data, can tell); anything else is `TrainingError("training failed: ...")`."""
    root = root_error(exc)
    text = str(root).strip().splitlines()
    if isinstance(root, DataError):
        return TrainingInputError(f"--data {request.data}: {text[0] if text else type(root).__name__}")
    if isinstance(root, TrainingInputError):
        return TrainingInputError(text[0] if text else type(root).__name__)
    return TrainingError(f"training failed: {first_line(exc)}")


def root_error(exc: BaseException) -> BaseException:
    """The error a worker (or the controller) raised, from inside Ray Train's wrappers (the lowest rank's).

    Ray Train wraps a worker's exception in `WorkerGroupError.worker_failures` ({rank: exception}), a
    controller's in `ControllerError.controller_failure`, and a remote call's in `RayTaskError.cause`.
    """
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return root_error(failures[min(failures)])
    for attribute in ("controller_failure", "cause"):
        inner = getattr(exc, attribute, None)
        if isinstance(inner, BaseException) and inner is not exc:
            return root_error(inner)
    if exc.__cause__ is not None:
        return root_error(exc.__cause__)
    return exc


def first_line(exc: BaseException) -> str:
    """The root error's type and first line (with the rank that raised it): what a person needs from Ray Train."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        rank = min(failures)
        return f"rank {rank}: {first_line(failures[rank])}"
    root = root_error(exc)
    text = str(root).strip().splitlines()
    return f"{type(root).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_result(store: ObjectStore, request: TrainRequest) -> RunResult:
    """Read a finished run's `latest.json` and checkpoint back as a `RunResult`."""
    latest = find_latest(store, request.name, request.run)
    if latest is None or not latest.get("done"):
        raise TrainingError(f"run {request.name}/{request.run} did not finish (no final checkpoint)")
    payload = checkpoint_from_bytes(store.get(latest["checkpoint_key"]))
    return RunResult(
        name=request.name,
        run=request.run,
        preset=request.preset,
        step=int(latest["step"]),
        checkpoint_uri=store.uri(latest["checkpoint_key"]),
        generator_uri=store.uri(latest["generator_key"]),
        generator_key=str(latest["generator_key"]),
        generator_sha256=str(latest["generator_sha256"]),
        data_fingerprint=str(latest["data_fingerprint"]),
        model_config=payload["model_config"],
        train_config=payload["train_config"],
        history=payload.get("history", {}),
    )
