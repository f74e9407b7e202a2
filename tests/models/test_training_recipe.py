"""Training recipes on the plain (Ray-free) loop: --init-from with a D warm-up, --batch-size, --precision bf16.

The `tiny` preset on a 2-category folder of small images; a few steps each.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from db.storage import LocalStore, open_store
from models.checkpoint import (
    TRAINABLE,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    generator_only,
    sha256_hex,
    trainable_only,
)
from models.config import get_preset
from models.data.dataset import open_dataset
from models.errors import CheckpointError, TrainingError
from models.inference import random_generator_checkpoint
from models.runs import new_run_record, read_history, write_run_record
from models.training import INIT_FILE, TrainRequest, find_latest, pin_init_checkpoint, prepare_run, run_worker
from models.training_run import cpus_for
from models.training_state import WorkerState, apply_init, init_state


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories of six 12x12 PNGs, dark and light."""
    root = tmp_path_factory.mktemp("recipe-folder")
    rng = np.random.default_rng(1)
    for category, level in (("dark", 40), ("light", 210)):
        (root / category).mkdir()
        for i in range(6):
            pixels = np.clip(rng.normal(level, 25, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / category / f"{i}.png")
    return root


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    opened = open_store((tmp_path / "objects").as_uri())
    assert isinstance(opened, LocalStore)
    return opened


def _request(store: LocalStore, folder: Path, run: str, steps: int, **extra: object) -> TrainRequest:
    return TrainRequest.from_dict(
        {
            "preset": "tiny",
            "data": str(folder),
            "steps": steps,
            "out_url": store.url,
            "name": "tiny",
            "run": run,
            "checkpoint_every": 1,
            "log_every": 1,
            "cpus_per_worker": 1,
            **extra,
        }
    )


def _checkpoint(store: LocalStore, run: str, step: int) -> dict[str, object]:
    return checkpoint_from_bytes(store.get(f"models/tiny/{run}/checkpoint-{step:08d}.pt"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)


def _start(store: LocalStore, request: TrainRequest, init: bytes | None = None) -> TrainRequest:
    """What `train_and_register` does before Ray: check, pin the init, write the run record."""
    request = prepare_run(request, store)
    if init is not None:
        request = pin_init_checkpoint(store, request, init)
    write_run_record(store, new_run_record(request.to_dict()))
    return request


def test_init_from_loads_the_generator_and_a_d_warmup_leaves_it_untouched(
    store: LocalStore, folder: Path
) -> None:
    # Given a trained tiny generator (2 steps) as a generator-only checkpoint
    run_worker(_start(store, _request(store, folder, "base", 2)), log=lambda _line: None)
    init = store.get("models/tiny/base/generator.pt")
    loaded = checkpoint_from_bytes(init)["generator_ema"]
    # When a new run starts from it with a 2-step D warm-up and trains to step 3
    request = _start(store, _request(store, folder, "tuned", 3, init_from="base.pt", d_warmup_steps=2), init)
    lines: list[str] = []
    state = run_worker(request, log=lines.append)
    # Then the log says where it started and that D is fresh (a generator-only checkpoint has none)
    assert any(line.startswith("starting from base.pt") and "D starts fresh" in line for line in lines)
    # And the run keeps a pinned copy of the init, recorded by sha256
    assert store.get(f"models/tiny/tuned/{INIT_FILE}") == init
    assert request.init_sha256 == sha256_hex(init)
    # And during the warm-up G_ema is exactly the loaded generator and G has its weights (G's batch-norm
    # running statistics follow its train-mode forwards, as in any step), while D learns
    warm = _checkpoint(store, "tuned", 2)
    assert _same(warm["generator_ema"], loaded)
    weights = {key for key in loaded if "running_" not in key and "num_batches" not in key}
    assert weights and all(torch.equal(warm["generator"][key], loaded[key]) for key in weights)
    assert not _same(warm["discriminator"], _checkpoint(store, "tuned", 1)["discriminator"])
    # And G's loss was measured during the warm-up (not made up), and G moves after it
    assert all(np.isfinite(state.history["loss_g"])) and len(set(state.history["loss_g"])) == 3
    assert not _same(_checkpoint(store, "tuned", 3)["generator"], loaded)


def test_a_trainable_checkpoint_continues_the_pair_and_a_generator_only_one_starts_a_fresh_d(
    store: LocalStore, folder: Path
) -> None:
    # Given a tiny run trained 2 steps, its full checkpoint cut down to G, G_ema and D
    run_worker(_start(store, _request(store, folder, "pair", 2)), log=lambda _line: None)
    full = _checkpoint(store, "pair", 2)
    trainable = checkpoint_to_bytes(trainable_only(full))
    payload = checkpoint_from_bytes(trainable)
    assert payload["kind"] == TRAINABLE and not {"optimizer_g", "optimizer_d", "rng"} & set(payload)
    assert len(trainable) < len(checkpoint_to_bytes(full))
    data = open_dataset(str(folder), 12, 3)

    def fresh() -> WorkerState:
        return init_state(get_preset("tiny"), data, 0, torch.device("cpu"))

    # When a fresh state takes it
    state = fresh()
    apply_init(state, payload)
    # Then G is the trained G (not its average), G_ema the average and D the D it was trained against
    assert _same(state.generator.state_dict(), full["generator"])
    assert _same(state.generator_ema.state_dict(), full["generator_ema"])
    assert _same(state.discriminator.state_dict(), full["discriminator"])
    # And from a generator-only checkpoint both generators take the average and D stays fresh
    state, untouched = fresh(), fresh()
    apply_init(state, checkpoint_from_bytes(checkpoint_to_bytes(generator_only(full))))
    assert _same(state.generator.state_dict(), full["generator_ema"])
    assert _same(state.discriminator.state_dict(), untouched.discriminator.state_dict())
    # And a trainable checkpoint without its D is refused as incomplete, naming what is missing
    broken = {key: value for key, value in trainable_only(full).items() if key != "discriminator"}
    with pytest.raises(CheckpointError, match="incomplete 'trainable' checkpoint: missing discriminator"):
        checkpoint_from_bytes(checkpoint_to_bytes(broken))


def test_the_pinned_init_is_checked_by_the_worker(store: LocalStore, folder: Path) -> None:
    # Given a run that pinned a random tiny generator
    init = random_generator_checkpoint("tiny", seed=3)
    payload = checkpoint_from_bytes(init)
    payload["model_config"] = {**payload["model_config"], "categories": ["dark", "light"], "num_classes": 2}
    payload["generator_ema"] = {
        key: value[:2] if key.endswith("embedding.weight") else value
        for key, value in payload["generator_ema"].items()
    }
    request = _start(
        store, _request(store, folder, "pinned", 1, init_from="x.pt"), checkpoint_to_bytes(payload)
    )
    # When the stored copy is replaced after the check
    store.put(f"models/tiny/pinned/{INIT_FILE}", random_generator_checkpoint("tiny", seed=4))
    # Then the worker refuses it rather than train from bytes nobody checked
    with pytest.raises(TrainingError, match="not the checkpoint this run pinned"):
        run_worker(request, log=lambda _line: None)


def test_an_init_of_another_model_is_refused_before_anything_is_written(
    store: LocalStore, folder: Path
) -> None:
    # Given a fashion-cgan generator and a tiny run
    other = random_generator_checkpoint("fashion-cgan", seed=0)
    request = prepare_run(_request(store, folder, "mismatch", 2, init_from="fashion.pt"), store)
    # Then pinning it names the differing model fields, and the store stays empty
    with pytest.raises(
        TrainingError, match=r"--init-from fashion\.pt: its model is not the 'tiny' preset's \(.*g_width"
    ):
        pin_init_checkpoint(store, request, other)
    with pytest.raises(TrainingError, match=r"--init-from junk\.pt"):
        pin_init_checkpoint(store, dataclasses.replace(request, init_from="junk.pt"), b"not a checkpoint")
    assert list(store.list("models/")) == []


def test_bf16_trains_in_fp32_weights_and_resumes_exactly_with_the_recorded_recipe(
    store: LocalStore, folder: Path
) -> None:
    # Given a bf16 run at batch size 4 trained 3 steps straight, and the same run stopped at 1 and resumed
    recipe = {"precision": "bf16", "batch_size": 4}
    run_worker(_start(store, _request(store, folder, "straight", 3, **recipe)), log=lambda _line: None)
    run_worker(_start(store, _request(store, folder, "split", 1, **recipe)), log=lambda _line: None)
    # When the resume does not repeat the recipe (it comes from the run's record)
    resumed = prepare_run(_request(store, folder, "split", 3, resume=True), store)
    assert (resumed.precision, resumed.batch_size) == ("bf16", 4)
    run_worker(resumed, log=lambda _line: None)
    # Then both end with the same weights and optimiser states, kept in fp32, with finite losses
    a, b = _checkpoint(store, "straight", 3), _checkpoint(store, "split", 3)
    for key in ("generator", "generator_ema", "discriminator"):
        assert _same(a[key], b[key]), key
        assert {tensor.dtype for tensor in a[key].values() if tensor.is_floating_point()} == {torch.float32}
    assert a["train_config"]["batch_size"] == 4
    assert a["history"] == b["history"] and all(np.isfinite(a["history"]["loss_d"]))
    # And a resume that asks for another recipe is refused, naming the option (a default means "as recorded")
    with pytest.raises(TrainingError, match="--batch-size 8 differs from the run's 4"):
        prepare_run(_request(store, folder, "split", 4, resume=True, batch_size=8), store)
    run_worker(_start(store, _request(store, folder, "plain", 1)), log=lambda _line: None)
    with pytest.raises(TrainingError, match="--precision bf16 differs from the run's fp32"):
        prepare_run(_request(store, folder, "plain", 2, resume=True, precision="bf16"), store)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"precision": "fp16"}, "--precision must be one of fp32, bf16"),
        ({"d_warmup_steps": 5}, "--d-warmup-steps must be at least 0 and below --steps"),
        ({"d_warmup_steps": 1}, "--d-warmup-steps needs --init-from"),
        ({"init_from": "g.pt", "resume": True}, "--init-from starts a new run"),
        ({"batch_size": -1}, "--batch-size must be at least 1"),
    ],
)
def test_bad_recipes_are_refused_naming_the_option(
    store: LocalStore, folder: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(TrainingError, match=message):
        prepare_run(_request(store, folder, "bad", 5, **extra), store)
    assert list(store.list("models/")) == []


def test_the_train_cli_checks_init_from_and_precision_before_starting(tmp_path: Path) -> None:
    from scheduler.cli.root import cli as main

    runner = CliRunner()
    out = (tmp_path / "objects").as_uri()
    missing = runner.invoke(main, ["train", "--preset", "tiny", "--out", out, "--init-from", "nowhere/g.pt"])
    assert (
        missing.exit_code == 2
        and "--init-from" in missing.output
        and "no such checkpoint file" in missing.output
    )
    half = runner.invoke(main, ["train", "--preset", "tiny", "--out", out, "--precision", "fp16"])
    assert half.exit_code == 2 and "--precision" in half.output
    assert not (tmp_path / "objects").exists()


def test_a_local_cluster_gives_a_single_cpu_worker_every_core() -> None:
    cores = len(os.sched_getaffinity(0))
    assert cpus_for(1, local=True) == cores
    assert cpus_for(cores * 2, local=True) == 1
    assert cpus_for(1, local=False) == 1


class _Killed(BaseException):
    """The training process dying (nothing after the raise runs)."""


def test_a_run_killed_before_a_checkpoints_history_line_resumes_from_the_checkpoint_before(
    store: LocalStore, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run with a checkpoint and a history line every step, whose process dies writing step 2's line
    from models.run_recording import ProgressRecorder

    record = ProgressRecorder.record

    def dies_at_step_2(self: ProgressRecorder, step: int, extra: dict[str, object]) -> dict[str, object]:
        if step == 2:
            raise _Killed
        return record(self, step, extra)

    monkeypatch.setattr(ProgressRecorder, "record", dies_at_step_2)
    with pytest.raises(_Killed):
        run_worker(_start(store, _request(store, folder, "killed", 3)), log=lambda _line: None)
    monkeypatch.setattr(ProgressRecorder, "record", record)
    # Then latest.json points at step 1, whose line was written (before: at step 2's checkpoint, written first)
    latest = find_latest(store, "tiny", "killed")
    assert latest is not None and latest["step"] == 1
    # And the resumed run has one history line per step, none missing (before: step 2's was lost for good)
    run_worker(prepare_run(_request(store, folder, "killed", 3, resume=True), store), log=lambda _line: None)
    assert [line["step"] for line in read_history(store, "tiny", "killed")] == [1, 2, 3]
