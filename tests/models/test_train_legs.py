"""`bench/train_legs.py`: one training run carried across machines in legs, without Ray (tiny preset, batch 4).

The legs of issue 15's CPU training are committed between sessions, so what a leg exports must be what the
next leg starts from: G, G_ema and D of its last checkpoint, the history renumbered by total step, and a
record that chains each leg to the bytes it began with. No quality is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from db.storage import open_store
from models.checkpoint import TRAINABLE, checkpoint_from_bytes, sha256_hex
from models.training import pin_init_checkpoint, run_worker
from models.training_state import TrainRequest

_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train_legs.py"
_spec = importlib.util.spec_from_file_location("train_legs", _SCRIPT)
assert _spec is not None and _spec.loader is not None
train_legs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_legs)  # bench/ is not a package


def _leg_args(carry: Path, workdir: Path, **changes: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "carry": str(carry),
        "total_steps": 5,
        "leg_steps": None,
        "workdir": str(workdir),
        "preset": "tiny",
        "name": "legs",
        "data": "fashion-mnist",
        "batch_size": 4,
        "precision": "fp32",
        "seed": 0,
        "checkpoint_every": 1,
        "eval_every": 0,
        "log_every": 1,
    }
    values.update(changes)
    return argparse.Namespace(**values)


def _train(store_url: str, run: str, steps: int, seed: int, init: bytes | None = None) -> None:
    request = TrainRequest(
        preset="tiny",
        data="fashion-mnist",
        steps=steps,
        out_url=store_url,
        name="legs",
        run=run,
        checkpoint_every=1,
        log_every=1,
        seed=seed,
        batch_size=4,
        eval_every=steps,  # one periodic evaluation, at the leg's last step
        eval_samples=10,
    )
    if init is not None:
        request = pin_init_checkpoint(open_store(store_url), request, init)
    run_worker(request, log=lambda line: None)


def test_two_legs_chain_their_checkpoints_and_history(tmp_path: Path) -> None:
    carry, store_url = tmp_path / "carry", (tmp_path / "store").as_uri()
    args = _leg_args(carry, tmp_path / "store")
    # Given leg 0's command: no init, the preset seed, the whole run's steps
    command, seed, run, init_sha = train_legs.leg_command(args, train_legs.read_legs(carry))
    assert (seed, run, init_sha) == (0, "leg-0", None) and "--init-from" not in command
    assert command[command.index("--steps") + 1] == "5" and command[command.index("--seed") + 1] == "0"
    # When leg 0 trains 3 of the 5 steps and is exported
    _train(store_url, run, steps=3, seed=seed)
    first = train_legs.export(carry, store_url, "legs", run, "leg 0", seed, init_sha, None)
    # Then the carry holds its G, G_ema and D at step 3 and no optimiser state
    trainable = (carry / "trainable.pt").read_bytes()
    payload = checkpoint_from_bytes(trainable)
    assert payload["kind"] == TRAINABLE and payload["step"] == 3 and "optimizer_d" not in payload
    assert first["trainable_sha256"] == sha256_hex(trainable) and first["total_steps_after"] == 3

    # When the next leg's command is built from the carry
    legs = train_legs.read_legs(carry)
    command, seed, run, init_sha = train_legs.leg_command(args, legs)
    # Then it starts from leg 0's bytes with the next seed, for the 2 steps left
    assert command[command.index("--init-from") + 1] == str(carry / "trainable.pt")
    assert (seed, run, init_sha) == (1, "leg-1", first["trainable_sha256"])
    assert command[command.index("--steps") + 1] == "2"
    # (--leg-steps caps a leg below what is left)
    capped, *_ = train_legs.leg_command(_leg_args(carry, tmp_path / "store", leg_steps=1), legs)
    assert capped[capped.index("--steps") + 1] == "1"

    # When leg 1 trains those 2 steps from it and is exported
    _train(store_url, run, steps=2, seed=seed, init=trainable)
    second = train_legs.export(carry, store_url, "legs", run, "leg 1", seed, init_sha, None)
    # Then the record chains the legs and counts 5 steps in all
    recorded = train_legs.read_legs(carry)["legs"]
    assert [leg["steps"] for leg in recorded] == [3, 2] and train_legs.steps_done({"legs": recorded}) == 5
    assert recorded[1]["init_sha256"] == recorded[0]["trainable_sha256"] == first["trainable_sha256"]
    assert second["trainable_sha256"] != first["trainable_sha256"]
    # And the history runs on in total steps across the legs
    lines = [json.loads(line) for line in (carry / "history.jsonl").read_text().splitlines()]
    assert [(line["leg"], line["step"], line["total_step"]) for line in lines] == [
        (0, 1, 1),
        (0, 2, 2),
        (0, 3, 3),
        (1, 1, 4),
        (1, 2, 5),
    ]
    # And the periodic evaluations (one per leg, at its last step) sit at total steps 3 and 5, drawn in the curve
    evaluations = [line["total_step"] for line in lines if "fid_fm" in line]
    assert evaluations == [3, 5] and (carry / "quality.png").read_bytes().startswith(b"\x89PNG")
    # And a leg asked for once the run is complete trains nothing
    assert train_legs.run_leg(args) == 0


_FAKE_RUN = """
import json, pathlib, sys, time
latest = pathlib.Path(sys.argv[1])
latest.parent.mkdir(parents=True, exist_ok=True)
for step in (1, 2, 3):
    latest.write_text(json.dumps({"step": step}))
    time.sleep(1.5)
time.sleep(60)
"""


def test_a_leg_past_its_budget_is_stopped_right_after_its_next_checkpoint(tmp_path: Path) -> None:
    # Given a run that writes a checkpoint every 1.5 s and then hangs
    latest = tmp_path / "run" / "latest.json"
    process = subprocess.Popen([sys.executable, "-c", _FAKE_RUN, str(latest)])
    started = time.monotonic()
    try:
        # When its budget is already spent
        train_legs.stop_after_budget(process, latest, budget_s=0.0, poll_s=0.2)
    finally:
        process.kill()
    # Then it was sent SIGTERM after a newer checkpoint than the one seen when the budget ran out, long
    # before it would have ended by itself
    assert process.returncode == -15
    assert train_legs.checkpoint_step(latest) >= 2
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("content", ["", "{", '{"other": 1}'])
def test_an_unreadable_latest_counts_as_no_checkpoint(tmp_path: Path, content: str) -> None:
    latest = tmp_path / "latest.json"
    latest.write_text(content)
    assert train_legs.checkpoint_step(latest) == 0
    assert train_legs.checkpoint_step(tmp_path / "missing.json") == 0
