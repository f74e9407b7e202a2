"""`catalogan train` bad input: one line naming the option, exit 2, nothing written, and Ray never started.

Every test here replaces Ray's entry points (`start_ray`, `fit_with_ray`) with one that fails the test, so a
check that only happens after Ray has started shows up as a failure instead of a run.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from db.cli_support import ExitCode
from db.storage import LocalStore, open_store
from models import training_run
from models.cli import MAX_BATCH_SIZE, MAX_STEPS
from models.inference import random_generator_checkpoint
from models.runs import RunStatus, new_run_record, read_run_record, write_run_record
from models.training import TrainRequest, prepare_run
from models.training_run import TrainOptions, train_and_register
from models.training_state import RunResult
from scheduler.cli.root import cli
from tests.cli_results import one_error_line


class RayStarted(AssertionError):
    """Raised when a test reached Ray: the check it is about came too late."""


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's entry points fail the test; a local cluster is what `catalogan train` would start."""

    def started(*_args: object, **_kwargs: object) -> None:
        raise RayStarted("Ray was started: the bad input was not refused before it")

    monkeypatch.setattr(training_run, "start_ray", started)
    monkeypatch.setattr(training_run, "fit_with_ray", started)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three categories of four 12x12 PNGs, as the auditor's /tmp/mlaudit/photos."""
    root = tmp_path / "photos"
    for category in ("bags", "hats", "shoes"):
        (root / category).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (40 * i, 80, 160)).save(root / category / f"{i}.png")
    return root


def _train(tmp_path: Path, *args: str) -> Result:
    out = (tmp_path / "objects").as_uri()
    return CliRunner().invoke(cli, ["train", "--preset", "tiny", "--steps", "2", "--out", out, *args])


def _refused(result: Result, starts: str) -> None:
    assert result.exit_code == ExitCode.USAGE, result.output
    assert one_error_line(result).startswith("Error: " + starts), result.output


def test_evaluate_on_data_the_evaluator_does_not_know_is_refused_before_ray_starts(
    tmp_path: Path, photos: Path
) -> None:
    """Given a folder of three categories, when `train --evaluate` runs on it, then it is refused like
    --eval-every, naming --evaluate, and nothing is written: before, it trained and then failed in the
    evaluator ("this generator has 3"), exit 2 without naming the option, leaving the run `running`."""
    result = _train(tmp_path, "--data", str(photos), "--evaluate")
    _refused(result, "--evaluate needs --data fashion-mnist[:/path]")
    assert not (tmp_path / "objects").exists()


def test_a_failure_after_the_last_step_records_the_run_failed_without_a_resume_command(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a run whose training finishes, when registering it then fails (the registry is gone), then the
    error reaches the caller and run.json says `failed`, naming the trained generator, with no resume command
    (its steps are done: a resume would be refused): before, the record stayed `running`."""
    store = open_store((tmp_path / "objects").as_uri())
    monkeypatch.setattr(training_run, "start_ray", lambda *_args, **_kwargs: False)

    def fit(request: TrainRequest, _ray_dir: Path) -> RunResult:
        prefix = f"models/{request.name}/{request.run}"
        return RunResult(
            name=request.name,
            run=request.run,
            preset=request.preset,
            step=request.steps,
            checkpoint_uri=store.uri(f"{prefix}/checkpoint-00000002.pt"),
            generator_uri=store.uri(f"{prefix}/generator.pt"),
            generator_key=f"{prefix}/generator.pt",
            generator_sha256="0" * 64,
            data_fingerprint="sha256:d",
            model_config={},
            train_config={},
        )

    def registry_gone() -> sessionmaker[Session]:
        raise RuntimeError("the registry did not answer")

    monkeypatch.setattr(training_run, "fit_with_ray", fit)
    request = TrainRequest(
        preset="tiny",
        data=str(photos),
        steps=2,
        out_url=store.url,
        name="tiny",
        run="done",
        cpus_per_worker=1,
    )
    options = TrainOptions(register=True, memorization_index=False)
    with pytest.raises(RuntimeError, match="the registry did not answer"):
        train_and_register(request, options, registry=registry_gone)
    record = read_run_record(store, "tiny", "done")
    assert record is not None and record["status"] == RunStatus.FAILED.value
    assert record["error"].startswith("after the last step: the registry did not answer")
    assert store.uri("models/tiny/done/generator.pt") in record["error"]
    assert record["resume_command"] is None


def test_resuming_with_another_preset_is_refused_and_leaves_the_run_record_alone(
    tmp_path: Path, photos: Path
) -> None:
    """Given a stopped `tiny` run with a checkpoint, when it is resumed without --preset (the default
    fashion-cgan), then one line names --preset and the run's own, exit 2, and run.json is byte for byte what it
    was: before, Ray started, every rank failed ("model config differs") and run.json said fashion-cgan, step 0."""
    store = open_store((tmp_path / "objects").as_uri())
    store.put(
        "models/tiny/r1/latest.json",
        json.dumps(
            {"step": 1, "preset": "tiny", "checkpoint_key": "models/tiny/r1/checkpoint-00000001.pt"}
        ).encode(),
    )
    settings = TrainRequest(
        preset="tiny", data=str(photos), steps=4, out_url=store.url, name="tiny", run="r1"
    )
    write_run_record(
        store, {**new_run_record(settings.to_dict()), "status": RunStatus.STOPPED.value, "step": 1}
    )
    before = store.get("models/tiny/r1/run.json")
    out = store.url
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--name",
            "tiny",
            "--run",
            "r1",
            "--resume",
            "--steps",
            "4",
            "--data",
            str(photos),
            "--out",
            out,
        ],
    )
    _refused(result, "--preset fashion-cgan differs from the run's tiny")
    assert "--preset tiny" in one_error_line(result)
    assert store.get("models/tiny/r1/run.json") == before


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["--data", "{tmp}/no-such-photos"], "--data {tmp}/no-such-photos: "),
        (["--gpus"], "--gpus with --workers 1 needs 1 GPUs; there are 0"),
    ],
    ids=["bad-data", "no-gpu"],
)
def test_init_from_is_copied_into_the_store_only_after_every_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], starts: str
) -> None:
    """Given a good tiny checkpoint for --init-from, when another argument is refused (bad --data, --gpus
    without a GPU), then exit 2 naming that option and the store holds nothing: before, init-generator.pt
    was already copied there, an orphan of a run that never started."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    init = tmp_path / "g.pt"
    init.write_bytes(random_generator_checkpoint("tiny", seed=3))
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = _train(tmp_path, "--init-from", str(init), *args)
    _refused(result, starts.replace("{tmp}", str(tmp_path)))
    assert not (tmp_path / "objects").exists()


@pytest.mark.parametrize(
    "command",
    [["train", "--preset", "tiny", "--steps", "2"], ["train", "ls"], ["train", "show", "tiny/r1"]],
    ids=["train", "ls", "show"],
)
@pytest.mark.parametrize("out", ["./relout", "file://{tmp}/notes.pt/sub"], ids=["relative", "under-a-file"])
def test_an_out_that_is_not_a_store_is_a_usage_error_naming_out(
    tmp_path: Path, command: list[str], out: str
) -> None:
    """Given an --out that is no object-store URL, or a folder under a file, when `train`, `train ls` or
    `train show` runs, then it is click's usage error naming --out, exit 2: before, the store's error came back
    as an outage (exit 5) without naming the option."""
    (tmp_path / "notes.pt").write_text("not a folder\n")
    result = CliRunner().invoke(cli, [*command, "--out", out.replace("{tmp}", str(tmp_path))])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Invalid value for '--out'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "notes.pt").is_dir()


def test_an_out_this_host_cannot_write_to_is_refused_before_ray_starts(tmp_path: Path, photos: Path) -> None:
    """Given a store folder whose `models` is a file (the URL is fine, writing under it is not), when `train`
    runs, then the probe write names --out, exit 2: before, the first write came after Ray had started."""
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects" / "models").write_text("a file where the runs would go\n")
    result = _train(tmp_path, "--data", str(photos))
    _refused(result, f"--out {(tmp_path / 'objects').as_uri()}: cannot write there")


@pytest.mark.parametrize("seed", ["-1", "18446744073709551616"])
def test_a_seed_out_of_range_is_a_usage_error_naming_seed(tmp_path: Path, photos: Path, seed: str) -> None:
    """Given a seed outside 0 to 2^63-1, when `train --seed` runs, then click's usage error names --seed:
    before, 2^64 was taken and overflowed inside a rank after Ray started (exit 1)."""
    result = _train(tmp_path, "--data", str(photos), "--seed", seed)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Invalid value for '--seed'" in result.output
    assert not (tmp_path / "objects").exists()


def _idx_files(folder: Path, split_names: tuple[str, str]) -> None:
    images, labels = split_names
    pixels = np.zeros((4, 28, 28), dtype=np.uint8)
    with gzip.open(folder / images, "wb") as handle:
        handle.write(struct.pack(">IIII", 2051, 4, 28, 28) + pixels.tobytes())
    with gzip.open(folder / labels, "wb") as handle:
        handle.write(struct.pack(">II", 2049, 4) + bytes([0, 1, 2, 3]))


def test_fashion_mnist_without_its_test_files_is_refused_before_ray_starts(tmp_path: Path) -> None:
    """Given a Fashion-MNIST folder with the train files only, when `train --data fashion-mnist:FOLDER` runs,
    then the missing t10k file is named under --data, exit 2: before, the check read the train split only and
    every rank failed on the t10k files (the data fingerprint reads them) after Ray started."""
    folder = tmp_path / "fmnist"
    folder.mkdir()
    _idx_files(folder, ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"))
    result = _train(tmp_path, "--data", f"fashion-mnist:{folder}", "--no-memorization-index")
    _refused(result, f"--data fashion-mnist:{folder}: {folder}/t10k-images-idx3-ubyte.gz: file not found")
    assert not (tmp_path / "objects").exists()


@pytest.mark.parametrize("run", ["a/b", "../../x", ".hidden", "a b"])
def test_a_run_id_that_is_not_one_folder_is_a_usage_error_naming_run(
    tmp_path: Path, photos: Path, run: str
) -> None:
    """Given a --run that is not one key segment of the rule of --name, when `train` runs, then click's usage
    error names --run: before, `a/b` made a run `train ls` never lists and `../../x` a key error naming no
    option."""
    result = _train(tmp_path, "--data", str(photos), "--run", run)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Invalid value for '--run'" in result.output and "a run id is 1 to 64" in result.output
    assert not (tmp_path / "objects").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--batch-size", "1000000000"),
        ("--batch-size", str(MAX_BATCH_SIZE + 1)),
        ("--steps", str(MAX_STEPS + 1)),
    ],
)
def test_a_batch_size_or_step_count_over_its_bound_is_a_usage_error(
    tmp_path: Path, photos: Path, option: str, value: str
) -> None:
    """Given a --batch-size or --steps over its documented bound, when `train` runs, then click's usage error
    names the option: before, `--batch-size 1000000000` was accepted and went to Ray."""
    result = _train(tmp_path, "--data", str(photos), option, value)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert not (tmp_path / "objects").exists()


def test_prepare_run_refuses_a_run_id_for_scripts_too(tmp_path: Path, photos: Path) -> None:
    """Given a script that calls `train_and_register` without the CLI, when its request's run is `a/b`, then
    `prepare_run` (before Ray) refuses it naming --run, and writes nothing."""
    store = open_store((tmp_path / "objects").as_uri())
    assert isinstance(store, LocalStore)
    request = TrainRequest(
        preset="tiny", data=str(photos), steps=2, out_url=store.url, name="tiny", run="a/b"
    )
    with pytest.raises(ValueError, match="--run 'a/b': a run id is"):
        prepare_run(request, store)
    assert not (tmp_path / "objects").exists()
