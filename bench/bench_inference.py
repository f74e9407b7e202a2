"""Inference backends for the shipped generator on the CPU: images/s per backend and the ratio to eager, one run.

Every variant turns the same latents (`models.sampling.latents_for`) of the worker's batch into uint8 pixels
(the work of `LoadedGenerator.generate`), on `models/weights/fashion-cgan`:

- `eager`            the module as `load_generator` builds it, one forward per worker batch (the old path);
- `eager-fixed`      eager in fixed compute batches of `--compute-batch`, the last one padded — the adopted,
                     batch-invariant path (`load_generator(...).generate`);
- `channels_last`    the module and its activations in NHWC (oneDNN's preferred layout);
- `bf16`             CPU autocast to bfloat16 (oneDNN/AMX where the CPU has it) — different pixels from fp32;
- `compile`          `torch.compile` (inductor, CPU); its compile time is printed apart;
- `onnxruntime`      the module exported to ONNX at the worker batch, run by ONNX Runtime's CPU provider;
- `onnxruntime-fixed` `load_generator(..., backend="onnxruntime")`: ONNX Runtime in fixed, padded compute
                     batches of `--compute-batch` (batch-invariant like eager-fixed);
- `eager-fixed-folded`, `onnxruntime-fixed-folded` the same two with the folded graph (`graph="folded"`: each
                     nearest ×2 → conv3×3 as one stride-2 transposed conv); `onnxruntime-fixed-folded` is
                     what a CPU worker runs by default (`--skip folded` leaves both out);
- `openvino-fixed`   the same ONNX export (at `--compute-batch` rows) compiled by OpenVINO's CPU plugin with
                     fp32 inference precision (its default on a CPU with AMX/AVX-512-BF16 is bf16), in fixed,
                     padded blocks; `openvino-bf16-fixed` the same at OpenVINO's own default precision.
                     Skipped when `openvino` is not installed (`pip install openvino`; it is not a dependency).

Rounds alternate between the variants so a load change on the box hits each of them alike; the rate is the
median over rounds. Each variant's pixels are compared with eager's (images that differ): a backend whose
pixels differ is a different determinism key (`models.inference.InferenceSpec`), not a drop-in replacement.

Then the quality gate's evaluator on eager and on ONNX Runtime (the backend a CPU worker's gate follows), on the
same images (`--skip evaluator` leaves it out).

    python bench/bench_inference.py [--batch 64] [--compute-batch 8] [--rounds 5] [--threads N] [--skip compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.inference import FOLDED, ONNXRUNTIME, export_onnx, load_generator, padded_blocks
from models.sampling import latents_for

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "weights" / "fashion-cgan" / "generator.pt"
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (B, Z), y (B,)) -> uint8 (B, H, W, C)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] → uint8 (B, H, W, C), as `LoadedGenerator.generate` quantises."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def variants(batch: int, compute_batch: int, skip: set[str]) -> dict[str, Forward]:
    """The backends to time, each a forward from latents to uint8 pixels."""
    data = SHIPPED.read_bytes()
    eager = load_generator(data, compute_batch=batch)
    fixed = load_generator(data, compute_batch=compute_batch)
    module = eager.module
    out: dict[str, Forward] = {}

    def run_eager(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return eager.generate(y, z)

    out["eager"] = run_eager

    def run_fixed(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fixed.generate(y, z)

    out["eager-fixed"] = run_fixed
    if "folded" not in skip:
        folded = load_generator(data, compute_batch=compute_batch, graph=FOLDED)

        def run_folded(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return folded.generate(y, z)

        out["eager-fixed-folded"] = run_folded
    if "channels_last" not in skip:
        nhwc = load_generator(data).module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        def run_nhwc(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return to_pixels(nhwc(z, y))

        out["channels_last"] = run_nhwc
    if "bf16" not in skip:

        def run_bf16(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return to_pixels(module(z, y))

        out["bf16"] = run_bf16
    if "compile" not in skip:
        compiled = torch.compile(load_generator(data).module, backend="inductor", dynamic=False)
        z0, y0 = latents_for(0, range(batch), eager.z_dim), torch.zeros(batch, dtype=torch.long)
        started = time.perf_counter()
        with torch.inference_mode():
            compiled(z0, y0)
        print(f"compile: first call (compilation) {time.perf_counter() - started:.1f} s", flush=True)

        def run_compiled(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return to_pixels(compiled(z, y))

        out["compile"] = run_compiled
    if "onnxruntime" not in skip:
        adopted = load_generator(data, backend=ONNXRUNTIME, compute_batch=compute_batch)

        def run_onnx_fixed(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return adopted.generate(y, z)

        out["onnxruntime-fixed"] = run_onnx_fixed
        if "folded" not in skip:
            adopted_folded = load_generator(
                data, backend=ONNXRUNTIME, compute_batch=compute_batch, graph=FOLDED
            )

            def run_onnx_folded(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return adopted_folded.generate(y, z)

            out["onnxruntime-fixed-folded"] = run_onnx_folded
        session = _onnx_session(module, batch, eager.z_dim)
        if session is not None:

            def run_onnx(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                (images,) = session.run(None, {"z": z.numpy(), "y": y.numpy()})
                return to_pixels(torch.from_numpy(images))

            out["onnxruntime"] = run_onnx
    if "openvino" not in skip:
        for name, precision in (("openvino-fixed", "f32"), ("openvino-bf16-fixed", None)):
            request = _openvino_request(module, compute_batch, eager.z_dim, precision)
            if request is None:
                break
            out[name] = _fixed_blocks(request, compute_batch)
    return out


def _openvino_request(module: torch.nn.Module, batch: int, z_dim: int, precision: str | None) -> Any:
    """An OpenVINO CPU infer request for the module at `batch` rows, one stream of `torch` threads.

    `precision` "f32" pins fp32 math; None leaves OpenVINO's default (bf16 where the CPU has it).
    """
    try:
        import openvino
    except ImportError:
        print("openvino: not installed, skipped (pip install openvino)", flush=True)
        return None
    core = openvino.Core()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generator.onnx"
        path.write_bytes(export_onnx(module, batch, z_dim))
        model = core.read_model(str(path))
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    print(
        f"openvino {openvino.__version__}: precision {compiled.get_property('INFERENCE_PRECISION_HINT')}",
        flush=True,
    )
    return compiled.create_infer_request()


def _fixed_blocks(request: Any, block: int) -> Forward:
    """A forward that runs `request` over padded blocks of exactly `block` rows, as `generate` does."""
    output = request.model_outputs[0]

    def run(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = [
            torch.from_numpy(request.infer({"z": z_block.numpy(), "y": y_block.numpy()})[output].copy())
            for z_block, y_block in padded_blocks(z, y, block)
        ]
        return to_pixels(torch.cat(parts)[: len(z)])

    return run


def _onnx_session(module: torch.nn.Module, batch: int, z_dim: int) -> Any:
    """ONNX Runtime on the module exported at the worker batch (not batch-invariant: one shape per call)."""
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime: not installed, skipped", flush=True)
        return None
    try:
        model = export_onnx(module, batch, z_dim)
    except Exception as exc:  # an exporter that cannot take the module is a result, not a crash
        print(f"onnxruntime: export failed ({type(exc).__name__}: {exc}), skipped", flush=True)
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main() -> None:
    """Parse the flags, time every variant in alternating rounds, print images/s and the ratio to eager."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64, help="worker batch (images per call)")
    parser.add_argument("--compute-batch", type=int, default=8, help="eager-fixed's compute batch")
    parser.add_argument("--images", type=int, default=512, help="images per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", action="append", default=[], help="a variant to leave out (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {args.images} images/round"
    )
    runs = variants(args.batch, args.compute_batch, set(args.skip))
    z = latents_for(31, range(args.images), 128)  # (N, z_dim)
    y = torch.arange(args.images) % 10  # (N,)
    reference: torch.Tensor | None = None
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for name, forward in runs.items():  # warm-up + pixel comparison with eager
        pixels = torch.cat(
            [forward(z[s : s + args.batch], y[s : s + args.batch]) for s in range(0, len(z), args.batch)]
        )
        reference = pixels if reference is None else reference
        differ = int((pixels != reference).reshape(len(pixels), -1).any(dim=1).sum())
        print(f"{name:>24}: {differ} of {len(pixels)} images differ from eager's pixels", flush=True)
    for _ in range(args.rounds):
        for name, forward in runs.items():
            started = time.perf_counter()
            for start in range(0, len(z), args.batch):
                forward(z[start : start + args.batch], y[start : start + args.batch])
            rates[name].append(len(z) / (time.perf_counter() - started))
    eager_rate = statistics.median(rates["eager"])
    print(f"{'backend':>24} {'images/s':>9} {'x eager':>8}  rounds")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:>24} {rate:9.0f} {rate / eager_rate:8.2f}  {' '.join(f'{v:.0f}' for v in values)}")
    if "evaluator" not in set(args.skip):
        evaluator_rates(reference if reference is not None else runs["eager"](z, y), args.rounds)


def evaluator_rates(pixels: torch.Tensor, rounds: int) -> None:
    """The quality gate's evaluator (`workers.quality_gate.EvaluatorScorer`, no index) on each backend: the
    same uint8 images scored in alternating rounds; images/s, the ratio to eager and the largest score gap."""
    from workers.quality_gate import EvaluatorScorer

    scorers = {backend: EvaluatorScorer(None, backend=backend) for backend in ("eager", ONNXRUNTIME)}
    scores = {backend: scorer(pixels, 3).confidence for backend, scorer in scorers.items()}  # warm-up
    gap = float(abs(scores[ONNXRUNTIME] - scores["eager"]).max())
    rates: dict[str, list[float]] = {backend: [] for backend in scorers}
    for _ in range(rounds):
        for backend, scorer in scorers.items():
            started = time.perf_counter()
            scorer(pixels, 3)
            rates[backend].append(len(pixels) / (time.perf_counter() - started))
    eager_rate = statistics.median(rates["eager"])
    print(f"\nthe gate's evaluator, {len(pixels)} images (largest score gap onnxruntime vs eager {gap:.1e})")
    for backend, values in rates.items():
        rate = statistics.median(values)
        print(
            f"{'evaluator ' + backend:>24} {rate:9.0f} {rate / eager_rate:8.2f}  {' '.join(f'{v:.0f}' for v in values)}"
        )


if __name__ == "__main__":
    main()
