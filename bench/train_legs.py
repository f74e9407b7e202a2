"""One long training run carried across machines that each train part of it ("legs"), for boxes without a GPU.

A better fashion-cgan (issue 15) needs about 20,000 steps at batch 128; the 2-core development box trains
that at about 0.9 steps/s in bf16, i.e. six hours, and a session there lasts three. So the run is cut into
legs. Each leg is `catalogan train --init-from` the previous leg's G, G_ema and D (a trainable checkpoint,
about 24 MB instead of the full checkpoint's 60: no optimiser state), with its own seed (preset seed + leg
number, so a leg does not replay the previous leg's latents and batches), and ends with an export into a
carry folder that is committed with the code:

    CARRY/trainable.pt      G, G_ema and D after the last leg (what the next leg starts from)
    CARRY/legs.json         every leg: steps, seed, command, CPU, the sha256 of what it started from and made
    CARRY/history.jsonl     the legs' history lines with `total_step` (losses, periodic FID_fm and accuracy)
    CARRY/quality.png       FID_fm and per-category accuracy against total step, from the periodic evaluations

What a leg loses against one uninterrupted run is Adam's state (its second-moment estimate restarts; with
the presets' beta1 = 0 the first moment is the last gradient anyway) and nothing else: D goes on with G, and
G_ema keeps its full decay from the first step of a leg (`models.training.run_worker` skips the EMA warm-up
after an init).

    # a leg: start (or go on from CARRY/trainable.pt), stop at the first checkpoint after --budget-s, export
    .venv/bin/python bench/train_legs.py run --carry bench/candidates/fashion-cgan-cpu-b128 \\
        --total-steps 24000 --budget-s 7200
    # export a run started by hand (or killed): its latest checkpoint becomes the next leg's start
    .venv/bin/python bench/train_legs.py export --carry DIR --store file:///work/legs/store --run RUN \\
        --command "catalogan train ..."
    .venv/bin/python bench/train_legs.py status --carry DIR       # legs so far, steps left, last evaluation
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train_precision, also when imported by path

ROOT = Path(__file__).resolve().parents[1]
LEGS = "legs.json"
TRAINABLE_FILE = "trainable.pt"
HISTORY = "history.jsonl"
QUALITY = "quality.png"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU's model and its bf16 features (a leg's speed depends on them), as bench_train_precision reads them."""
    from bench_train_precision import cpu_description

    model, flags = cpu_description()
    return f"{model} [{' '.join(flags)}]" if flags else model


def read_legs(carry: Path) -> dict[str, Any]:
    path = carry / LEGS
    if not path.exists():
        return {"legs": []}
    return json.loads(path.read_text())


def evaluations(carry: Path) -> list[dict[str, Any]]:
    """The periodic evaluations in CARRY/history.jsonl, oldest first (each with its `total_step`)."""
    history = carry / HISTORY
    if not history.exists():
        return []
    lines = (json.loads(text) for text in history.read_text().splitlines() if text.strip())
    return [line for line in lines if "fid_fm" in line]


def steps_done(legs: dict[str, Any]) -> int:
    return sum(int(leg["steps"]) for leg in legs["legs"])


def export(
    carry: Path,
    store_url: str,
    name: str,
    run: str,
    command: str,
    seed: int,
    init_sha256: str | None,
    started_at: str | None,
) -> dict[str, Any]:
    """The run's latest checkpoint → CARRY/trainable.pt, its history appended, the leg recorded."""
    from db.storage import open_store
    from models.checkpoint import (
        checkpoint_from_bytes,
        checkpoint_to_bytes,
        generator_only,
        sha256_hex,
        trainable_only,
    )
    from models.plots import quality_curve_png
    from models.runs import read_history, read_run_record
    from models.training import find_latest

    store = open_store(store_url)
    latest = find_latest(store, name, run)
    if latest is None:
        raise SystemExit(f"train_legs: {store_url} has no checkpoint of {name}/{run} to export")
    payload = checkpoint_from_bytes(store.get(latest["checkpoint_key"]))
    step = int(payload["step"])
    legs = read_legs(carry)
    before = steps_done(legs)
    trainable = checkpoint_to_bytes(trainable_only(payload))
    generator = checkpoint_to_bytes(generator_only(payload))
    carry.mkdir(parents=True, exist_ok=True)
    (carry / TRAINABLE_FILE).write_bytes(trainable)

    lines = [line for line in read_history(store, name, run) if int(line.get("step", 0)) <= step]
    with (carry / HISTORY).open("a") as history:
        for line in lines:
            history.write(
                json.dumps({**line, "leg": len(legs["legs"]), "total_step": before + line["step"]}) + "\n"
            )
    record = read_run_record(store, name, run) or {}
    leg: dict[str, Any] = {
        "leg": len(legs["legs"]),
        "steps": step,
        "total_steps_after": before + step,
        "seed": seed,
        "command": command,
        "run": f"{name}/{run}",
        "status": record.get("status"),
        "started_at": started_at or record.get("started_at"),
        "exported_at": now_iso(),
        "cpu": cpu_model(),
        "init_sha256": init_sha256,
        "checkpoint_sha256": latest.get("checkpoint_sha256"),
        "trainable_sha256": sha256_hex(trainable),
        "generator_sha256": sha256_hex(generator),  # its G_ema as a generator-only file would hash to this
    }
    legs["legs"].append(leg)
    (carry / LEGS).write_text(json.dumps(legs, indent=2) + "\n")

    curve = [{**line, "step": line["total_step"]} for line in evaluations(carry)]
    if curve:
        (carry / QUALITY).write_bytes(quality_curve_png(curve, f"{name}: legs 0–{leg['leg']}"))
    print(
        f"leg {leg['leg']}: {step} steps (total {leg['total_steps_after']}) → {carry / TRAINABLE_FILE} "
        f"(sha256 {leg['trainable_sha256'][:12]}…; `catalogan evaluate` takes it as it is)"
    )
    return leg


def leg_command(args: argparse.Namespace, legs: dict[str, Any]) -> tuple[list[str], int, str, str | None]:
    """The next leg's `catalogan train` command, its seed, its run id and the sha256 of what it starts from."""
    carry = Path(args.carry)
    leg_number = len(legs["legs"])
    remaining = args.total_steps - steps_done(legs)
    seed = args.seed + leg_number
    run = f"leg-{leg_number}"
    steps = remaining if args.leg_steps is None else min(remaining, args.leg_steps)
    command = [
        str(Path(sys.executable).parent / "catalogan"),
        "train",
        "--preset", args.preset,
        "--data", args.data,
        "--steps", str(steps),
        "--batch-size", str(args.batch_size),
        "--precision", args.precision,
        "--checkpoint-every", str(args.checkpoint_every),
        "--eval-every", str(args.eval_every),
        "--log-every", str(args.log_every),
        "--seed", str(seed),
        "--out", Path(args.workdir).resolve().as_uri(),
        "--name", args.name,
        "--run", run,
        "--no-register",
        "--no-memorization-index",
    ]  # fmt: skip
    if leg_number == 0:
        return command, seed, run, None
    trainable = carry / TRAINABLE_FILE
    if not trainable.exists():
        raise SystemExit(f"train_legs: {carry / LEGS} records {leg_number} legs but {trainable} is missing")
    from models.checkpoint import sha256_hex

    return [*command, "--init-from", str(trainable)], seed, run, sha256_hex(trainable.read_bytes())


def checkpoint_step(latest_path: Path) -> int:
    """The step of the run's latest checkpoint (0 before the first)."""
    try:
        return int(json.loads(latest_path.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def stop_after_budget(
    process: subprocess.Popen[bytes], latest_path: Path, budget_s: float | None, poll_s: float = 5.0
) -> None:
    """Wait for `process`; once `budget_s` is spent, SIGTERM it as soon as a newer checkpoint is written.

    Stopping right after a checkpoint wastes no step; `catalogan train` records a SIGTERM as `stopped`.
    """
    started = time.monotonic()
    budget_step: int | None = None
    while process.poll() is None:
        time.sleep(poll_s)
        if budget_s is None or time.monotonic() - started < budget_s:
            continue
        step = checkpoint_step(latest_path)
        if budget_step is None:
            budget_step = step
            print(
                f"train_legs: budget of {budget_s:.0f} s spent at checkpoint {step}; stopping after the next"
            )
        elif step > budget_step:
            process.send_signal(signal.SIGTERM)
            process.wait()


def run_leg(args: argparse.Namespace) -> int:
    """Train one leg in a `catalogan train` process; stop at the first checkpoint after the budget; export."""
    carry = Path(args.carry)
    legs = read_legs(carry)
    before = steps_done(legs)
    if before >= args.total_steps:
        print(f"train_legs: {carry} already holds {before} of {args.total_steps} steps; nothing to train")
        return 0
    command, seed, run, init_sha256 = leg_command(args, legs)
    shown = shlex.join([Path(command[0]).name, *command[1:]])
    leg_number = len(legs["legs"])
    print(f"leg {leg_number} (from step {before} of {args.total_steps}, seed {seed}): {shown}", flush=True)
    started_at = now_iso()
    process = subprocess.Popen(command, cwd=ROOT)
    latest_path = Path(args.workdir) / "models" / args.name / run / "latest.json"
    stop_after_budget(process, latest_path, args.budget_s)
    if not latest_path.exists():
        print(
            f"train_legs: leg {leg_number} wrote no checkpoint (exit {process.returncode})", file=sys.stderr
        )
        return 1
    export(carry, Path(args.workdir).resolve().as_uri(), args.name, run, shown, seed, init_sha256, started_at)
    return 0


def status(args: argparse.Namespace) -> int:
    carry = Path(args.carry)
    legs = read_legs(carry)
    for leg in legs["legs"]:
        print(
            f"leg {leg['leg']}: {leg['steps']} steps (total {leg['total_steps_after']}), seed {leg['seed']}, "
            f"{leg['cpu']}, exported {leg['exported_at']}"
        )
    done = evaluations(carry)
    if done:
        print(f"last evaluation: total step {done[-1]['total_step']}, FID_fm {done[-1]['fid_fm']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("run", help="train the next leg and export it")
    run.add_argument("--carry", required=True, help="the folder the legs are carried in")
    run.add_argument("--total-steps", type=int, required=True)
    run.add_argument("--budget-s", type=float, help="stop at the first checkpoint after this many seconds")
    run.add_argument("--leg-steps", type=int, help="train at most this many steps in this leg")
    run.add_argument("--workdir", default="/tmp/train-legs", help="the object store the leg's run writes to")
    run.add_argument("--preset", default="fashion-cgan")
    run.add_argument("--name", default="fashion-cgan")
    run.add_argument("--data", default="fashion-mnist")
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    run.add_argument("--seed", type=int, default=0, help="leg 0's seed; leg k uses seed + k")
    run.add_argument("--checkpoint-every", type=int, default=500)
    run.add_argument("--eval-every", type=int, default=2000)
    run.add_argument("--log-every", type=int, default=100)
    exp = commands.add_parser("export", help="export a run's latest checkpoint as the next leg")
    exp.add_argument("--carry", required=True)
    exp.add_argument("--store", required=True, help="the run's object store URL")
    exp.add_argument("--name", default="fashion-cgan")
    exp.add_argument("--run", required=True)
    exp.add_argument("--command", required=True, help="the command that trained it, for legs.json")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--init-sha256")
    show = commands.add_parser("status", help="the legs so far")
    show.add_argument("--carry", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Ray starts its workers at niceness 15: on a box shared with anything else (tests, a benchmark) the
    # training worker got what the others left, at times half the steps. A leg is the box's main work.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if args.action == "run":
        return run_leg(args)
    if args.action == "export":
        export(
            Path(args.carry), args.store, args.name, args.run, args.command, args.seed, args.init_sha256, None
        )
        return 0
    return status(args)


if __name__ == "__main__":
    raise SystemExit(main())
