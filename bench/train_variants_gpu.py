"""Train several fashion-cgan recipe variants at once on one GPU, then score each with the project's evaluator.

A 1.7 M-parameter generator leaves an H200 mostly idle (the step rate is bound by kernel launches), so the
variants run as concurrent processes, each the same per-rank loop `catalogan train` runs under Ray Train
(`models.training.run_worker`, called directly: the GPU image has no Ray). Each writes a full checkpoint every
--checkpoint-every steps; a variant stopped by --train-s keeps its latest checkpoint. Then, within --eval-s,
the latest checkpoint of every variant and after that each variant's earlier checkpoints are scored
(`models.evaluation.evaluate_generator`, --samples per category, no CAS) into `variants.json` — the curves.
The latest EMA generator of every variant is written to --out as a generator-only checkpoint
(`NAME-generator.pt`, what `catalogan evaluate` and the registry take), and its G, G_ema and D as a trainable
checkpoint (`NAME-trainable.pt`, what `catalogan train --init-from` or `--init` here continues with the D
that G was trained against), cut into parts of at most --part-mib MiB (`NAME-trainable.pt.part-0`, ...) so
that each part fits the device machine's limit on a file brought back; `--join` puts one together again,
checks it against the sha256 recorded in `variants.json` and writes `NAME-generator.pt` from it (the same
bytes as the one written here). The device machine brings back at most 8 files and 64 MiB in all, so with
two or more variants pass `--no-generator-files`: each variant then costs two parts (about 23 MiB for
fashion-cgan) and its generator is made by `--join`.

    python bench/train_variants_gpu.py --data fashion-mnist:.devcarry/fashion-mnist --steps 20000 --out $OUT
    python bench/train_variants_gpu.py --join OUT/train/b128-trainable.pt      # on the CPU box, afterwards
                                        # (writes b128-trainable.pt and b128-generator.pt beside the parts)

--init FILE starts every variant from a checkpoint (generator-only: G and G_ema from its EMA weights with a
fresh D; trainable or full: the pair goes on training), as `catalogan train --init-from` does.

A variant is `name:key=value,...` over `TrainConfig` / `ModelConfig` fields of the fashion-cgan preset
(`--variant b128:batch_size=128`); `model.` prefixes a ModelConfig field (`model.d_width=96`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_VARIANTS = (
    "base:",
    "b128:batch_size=128",
    "wide-d:model.d_width=96",
    "b128-ema9999:batch_size=128,ema_decay=0.9999",
)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, body = text.partition(":")
    changes: dict[str, Any] = {}
    for pair in filter(None, body.split(",")):
        key, _, value = pair.partition("=")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return name, changes


def apply_variant(changes: dict[str, Any]) -> None:
    """Replace the fashion-cgan preset in this process with the variant's recipe."""
    from models import config

    preset = config.PRESETS["fashion-cgan"]
    model_changes = {k.removeprefix("model."): v for k, v in changes.items() if k.startswith("model.")}
    train_changes = {k: v for k, v in changes.items() if not k.startswith("model.")}
    config.PRESETS["fashion-cgan"] = dataclasses.replace(
        preset,
        model=dataclasses.replace(preset.model, **model_changes),
        train=dataclasses.replace(preset.train, **train_changes),
    )


def child(args: argparse.Namespace) -> None:
    import torch

    from models.training import TrainRequest, run_worker

    name, changes = parse_variant(args.child)
    apply_variant(changes)
    torch.backends.cudnn.benchmark = True
    request = TrainRequest(
        preset="fashion-cgan",
        data=args.data,
        steps=args.steps,
        out_url=Path(args.store).as_uri(),
        name="fashion-cgan",
        run=name,
        checkpoint_every=args.checkpoint_every,
        log_every=500,
        init_from=args.init or "",
    )
    if args.init:
        from db.storage import open_store
        from models.training import pin_init_checkpoint

        request = pin_init_checkpoint(open_store(request.out_url), request, Path(args.init).read_bytes())
    run_worker(
        request,
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        log=lambda line: print(f"[{name}] {line}", flush=True),
    )


def write_parts(data: bytes, path: Path, part_bytes: int) -> list[str]:
    """Write `data` as `path.part-0`, `path.part-1`, ... of at most `part_bytes` each; their names."""
    names = []
    for number, start in enumerate(range(0, len(data), part_bytes)):
        part = path.with_name(f"{path.name}.part-{number}")
        part.write_bytes(data[start : start + part_bytes])
        names.append(part.name)
    return names


def join_parts(path: Path) -> bytes:
    """The file `write_parts` cut, put together from its parts and checked against `variants.json`."""
    recorded = json.loads((path.parent / "variants.json").read_text())
    entry = next(
        (
            v["trainable"]
            for v in recorded["variants"].values()
            if v.get("trainable", {}).get("file") == path.name
        ),
        None,
    )
    if entry is None:
        raise SystemExit(f"--join: {path.parent / 'variants.json'} records no {path.name}")
    from models.checkpoint import sha256_hex

    data = b"".join((path.parent / name).read_bytes() for name in entry["parts"])
    actual = sha256_hex(data)
    if actual != entry["sha256"]:
        raise SystemExit(f"--join: {path.name} has sha256 {actual}, variants.json records {entry['sha256']}")
    return data


def checkpoints_of(store: Path, name: str) -> list[Path]:
    return sorted((store / "models" / "fashion-cgan" / name).glob("checkpoint-*.pt"))


def score(path: Path, samples: int, data: str) -> dict[str, Any]:
    import torch

    from models.evaluation import evaluate_generator, real_test_reference
    from models.inference import load_generator

    generator = load_generator(path.read_bytes(), device="cuda" if torch.cuda.is_available() else "cpu")
    root = Path(data.partition(":")[2]) if ":" in data else None
    reference = real_test_reference(root) if root else None  # the test split next to the training data
    report = evaluate_generator(generator, samples, seed=0, cas_config=None, reference=reference)
    keep = (
        "fid_fm",
        "kid",
        "precision",
        "recall",
        "conditional_accuracy",
        "intra_class_ssim",
        "per_class_accuracy",
    )
    return {k: v for k, v in report.to_dict().items() if k in keep}


def main() -> None:
    from models.checkpoint import (
        checkpoint_from_bytes,
        checkpoint_to_bytes,
        generator_only,
        sha256_hex,
        trainable_only,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--checkpoint-every", type=int, default=2000)
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--train-s", type=float, default=230.0)
    parser.add_argument("--eval-s", type=float, default=90.0)
    parser.add_argument("--samples", type=int, default=500, help="images per category when scoring")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--init", help="start every variant from this checkpoint (see above)")
    parser.add_argument("--part-mib", type=int, default=15, help="largest part of a trainable checkpoint")
    parser.add_argument(
        "--generator-files",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write NAME-generator.pt to --out (--join makes it from the parts either way)",
    )
    parser.add_argument(
        "--join", type=Path, help="put OUT/NAME-trainable.pt together from its parts, and exit"
    )
    parser.add_argument("--store")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.join:
        data = join_parts(args.join)
        args.join.write_bytes(data)
        generator = args.join.with_name(args.join.name.replace("-trainable.pt", "-generator.pt"))
        generator.write_bytes(checkpoint_to_bytes(generator_only(checkpoint_from_bytes(data))))
        print(f"{args.join}: sha256 checked; {generator.name} written beside it", flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.variant or list(DEFAULT_VARIANTS)
    store = Path(tempfile.mkdtemp(prefix="variants-"))
    summary: dict[str, Any] = {"variants": {}, "steps": args.steps}
    started = time.monotonic()
    processes = {}
    for text in variants:
        name, changes = parse_variant(text)
        summary["variants"][name] = {"changes": changes}
        command = [
            sys.executable,
            __file__,
            "--child",
            text,
            "--data",
            args.data,
            "--steps",
            str(args.steps),
            "--checkpoint-every",
            str(args.checkpoint_every),
            "--store",
            str(store),
            *(["--init", str(Path(args.init).resolve())] if args.init else []),
        ]
        processes[name] = subprocess.Popen(command)
    for name, process in processes.items():
        try:
            process.wait(timeout=max(1.0, args.train_s - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        summary["variants"][name]["returncode"] = process.returncode
    summary["train_seconds"] = round(time.monotonic() - started, 1)
    (args.out / "variants.json").write_text(json.dumps(summary, indent=2))

    for name in summary["variants"]:
        found = checkpoints_of(store, name)
        summary["variants"][name]["checkpoints"] = [p.name for p in found]
        if found:
            latest = checkpoint_from_bytes(found[-1].read_bytes())
            if args.generator_files:
                (args.out / f"{name}-generator.pt").write_bytes(checkpoint_to_bytes(generator_only(latest)))
            trainable = checkpoint_to_bytes(trainable_only(latest))
            path = args.out / f"{name}-trainable.pt"
            summary["variants"][name]["trainable"] = {
                "file": path.name,
                "step": latest["step"],
                "sha256": sha256_hex(trainable),
                "parts": write_parts(trainable, path, args.part_mib * 2**20),
            }
    (args.out / "variants.json").write_text(json.dumps(summary, indent=2))  # --join reads the sha256s
    eval_deadline = time.monotonic() + args.eval_s
    order = [(name, found[-1]) for name in summary["variants"] if (found := checkpoints_of(store, name))]
    order += [(name, p) for name in summary["variants"] for p in reversed(checkpoints_of(store, name)[:-1])]
    for name, path in order:
        if time.monotonic() > eval_deadline:
            summary["eval_stopped"] = "budget"
            break
        step = int(path.stem.split("-")[1])
        try:
            summary["variants"][name].setdefault("curve", {})[step] = score(path, args.samples, args.data)
        except Exception as exc:  # keep the other variants' scores
            summary["variants"][name].setdefault("errors", []).append(f"{path.name}: {exc!r}")
        print(
            f"scored {name} step {step}: {summary['variants'][name].get('curve', {}).get(step)}", flush=True
        )
        (args.out / "variants.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
