"""THE interface the generation workers use: load a generator from checkpoint bytes, turn latents into pixels.

`load_generator(bytes, device=..., backend=..., dtype=..., compute_batch=...)` builds the EMA generator a
checkpoint (full or generator-only) holds, in eval mode. `LoadedGenerator.generate` returns uint8
(B, H, W, C) on the CPU, ready to encode.

Batch invariance. A convolution library picks its kernels by the tensor shapes it sees (oneDNN ran a batch
of 1 through another algorithm than a batch of 64 and 18 of 2,000 images of the shipped generator came out one
grey level apart), so the pixels of one image must never depend on how many images ran beside it. `generate`
therefore runs every forward pass at ONE fixed compute batch (`InferenceSpec.compute_batch`), padding the
last block with zero latents of class 0; the rows of a block do not mix (eval-mode batch norm, per-row
GEMMs), which `tests/models/test_inference.py` checks on the shipped model for batch sizes 1, 7, 64 and 256,
positions and padding. Chunks, redraws, previews and `verify --regenerate` all come through here.

The determinism key of an image is (model version, seed, index, category, redraw) plus the `InferenceSpec`:
backend, device kind, dtype, compute batch and graph. The worker writes the spec into every file's provenance
and `verify --regenerate` loads the generator with the same spec, or says it cannot (another device kind).

The graph. `plain` runs the module as trained; `folded` computes each nearest ×2 → conv3×3 as one equivalent
stride-2 transposed convolution (`models.generator_cgan.fold_upsampling`): the same function with 4 instead of 9
multiply-adds per output pixel, rounded differently (about 1e-5 before quantisation, so a pixel in tens of
thousands lands one grey level apart). A worker's default (`auto`) is folded on the CPU, where it was measured
faster, and plain on CUDA until a device measures it (`bench/gpu_bench.py` section 1).
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.build import build_generator
from models.checkpoint import GENERATOR, checkpoint_from_bytes, checkpoint_to_bytes, sha256_hex
from models.config import ModelConfig, get_preset
from models.errors import CheckpointError
from models.generator_cgan import ConditionalGenerator, fold_upsampling

EAGER = "eager"
ONNXRUNTIME = "onnxruntime"  # CPU only; onnxruntime + onnx (the server extra, or 'catalogan[onnx]')
BACKENDS = (EAGER, ONNXRUNTIME)
PLAIN = "plain"  # the module as trained
# Each nearest ×2 → conv3×3 folded into one transposed conv (`models.generator_cgan.fold_upsampling`)
FOLDED = "folded"
GRAPHS = (PLAIN, FOLDED)
# A worker setting, not a backend: onnxruntime on the CPU when it is installed (1.3x eager's images/s for the
# shipped generator on a quiet 2-core box, docs/performance.md), eager otherwise and on CUDA.
AUTO = "auto"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Images per forward pass, padded: small on the CPU (oneDNN's per-image cost is flat from about 8 up, and a
# single-image `verify --regenerate` pays for a whole block), large on CUDA (launch-bound below ~1k).
CPU_COMPUTE_BATCH = 8
CUDA_COMPUTE_BATCH = 1024
MAX_COMPUTE_BATCH = 16384
# A worker's batch (images per forward call, encoded and uploaded together) when CATALOGAN_BATCH_SIZE is unset:
# 64 on the CPU (measured default); on CUDA 4 compute blocks, so one call keeps a GPU busy for milliseconds
# rather than being launch-bound (chosen by reasoning; bench/gpu_bench.py measures batch 256 to 16k).
CPU_WORKER_BATCH_SIZE = 64
CUDA_WORKER_BATCH_SIZE = 4096


@dataclass(frozen=True, slots=True)
class InferenceSpec:
    """How pixels are computed: part of an image's determinism key and of its provenance.

    Same (model version, seed, index, category, redraw, spec) → same bytes. Another backend, device kind,
    dtype, compute batch or graph may differ by a grey level in a few pixels.
    """

    backend: str = EAGER
    device_kind: str = "cpu"  # "cpu" | "cuda": the kind, not the ordinal (any GPU of the kind regenerates)
    dtype: str = "fp32"  # "fp32" | "bf16" (CUDA autocast)
    compute_batch: int = CPU_COMPUTE_BATCH
    graph: str = PLAIN  # "plain" | "folded"; files written before the field existed are plain

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"inference backend {self.backend!r}: must be one of {', '.join(BACKENDS)}")
        if self.device_kind not in ("cpu", "cuda"):
            raise ValueError(f"device kind {self.device_kind!r}: must be cpu or cuda")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: must be one of {', '.join(DTYPES)}")
        if self.dtype == "bf16" and self.device_kind != "cuda":
            raise ValueError("dtype bf16: only with device kind cuda (CPU inference is fp32)")
        if self.backend == ONNXRUNTIME and (self.device_kind, self.dtype) != ("cpu", "fp32"):
            raise ValueError("inference backend onnxruntime: only on cpu, fp32")
        if not 1 <= self.compute_batch <= MAX_COMPUTE_BATCH:
            raise ValueError(f"compute batch {self.compute_batch}: must be in 1..{MAX_COMPUTE_BATCH}")
        if self.graph not in GRAPHS:
            raise ValueError(f"inference graph {self.graph!r}: must be one of {', '.join(GRAPHS)}")

    def describe(self) -> str:
        """One line for people: "eager on cpu, fp32, compute batch 8" (", folded graph" when folded)."""
        return describe_fields(self.to_fields())

    def to_fields(self) -> dict[str, str]:
        """The spec as provenance text fields (`workers.encoding.Provenance.inference`).

        `graph` is written only when it is not plain, so a plain file keeps the bytes it had before the field
        existed (the fields are PNG text chunks) and an old file reads as plain.
        """
        fields = {
            "backend": self.backend,
            "device_kind": self.device_kind,
            "dtype": self.dtype,
            "compute_batch": str(self.compute_batch),
        }
        if self.graph != PLAIN:
            fields["graph"] = self.graph
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> InferenceSpec:
        """The spec from provenance fields; `ValueError` naming the field when one is malformed."""
        try:
            compute_batch = int(fields["compute_batch"])
        except ValueError as exc:
            raise ValueError(f"compute_batch {fields['compute_batch']!r}: not an integer") from exc
        return cls(
            fields["backend"],
            fields["device_kind"],
            fields["dtype"],
            compute_batch,
            fields.get("graph", PLAIN),
        )


def describe_fields(fields: dict[str, str]) -> str:
    """Provenance inference fields for people: "onnxruntime on cpu, fp32, compute batch 8, folded graph"."""
    text = f"{fields['backend']} on {fields['device_kind']}, {fields['dtype']}, compute batch {fields['compute_batch']}"
    graph = fields.get("graph", PLAIN)
    return text if graph == PLAIN else f"{text}, {graph} graph"


def resolve_backend(backend: str, device: str | torch.device) -> str:
    """The backend a worker on `device` runs for the setting `backend` (`auto` or one of `BACKENDS`).

    `auto` is onnxruntime on a CPU where both onnxruntime and onnx (its exporter) import, else eager. Which
    one ran is recorded in every file's provenance, so `verify --regenerate` recomputes with the same one.
    """
    if backend != AUTO:
        return backend
    if torch.device(device).type != "cpu":
        return EAGER
    installed = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))
    return ONNXRUNTIME if installed else EAGER


def resolve_graph(graph: str, device: str | torch.device) -> str:
    """The graph a worker on `device` runs for the setting `graph` (`auto` or one of `GRAPHS`).

    `auto` is folded on the CPU (1.7–1.8× the shipped generator's forward at one thread, 1.3× a worker's
    images/s end to end: docs/performance.md) and plain on CUDA, where the fold has not been measured yet
    (`bench/gpu_bench.py` section 1 times both).
    """
    if graph != AUTO:
        return graph
    return FOLDED if torch.device(device).type == "cpu" else PLAIN


def default_spec(
    device: str | torch.device,
    *,
    backend: str = EAGER,
    dtype: str | None = None,
    compute_batch: int | None = None,
    graph: str = PLAIN,
) -> InferenceSpec:
    """The spec a worker on `device` uses unless told otherwise: fp32 on CPU, bf16 autocast on CUDA.

    Raises `ValueError` naming the rule for an impossible combination (onnxruntime on CUDA, bf16 on CPU).
    """
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: catalogan infers on cpu or cuda")
    return InferenceSpec(
        backend,
        kind,
        dtype or ("bf16" if kind == "cuda" else "fp32"),
        compute_batch or (CUDA_COMPUTE_BATCH if kind == "cuda" else CPU_COMPUTE_BATCH),
        graph,
    )


class LoadedGenerator:
    """An EMA generator on a device with what callers need to know about it."""

    def __init__(
        self,
        module: nn.Module,
        config: ModelConfig,
        checkpoint_sha256: str,
        device: torch.device,
        spec: InferenceSpec | None = None,
    ) -> None:
        self.module = module
        self.config = config
        self.categories: tuple[str, ...] = config.categories or tuple(
            f"class-{i}" for i in range(config.num_classes)
        )
        self.checkpoint_sha256 = checkpoint_sha256
        self.z_dim = config.z_dim
        self.resolution = config.resolution
        self.channels = config.channels
        self.device = device
        self.spec = spec or default_spec(device)
        if self.spec.device_kind != device.type:
            raise ValueError(f"inference spec is for {self.spec.device_kind}, the generator is on {device}")
        self._session = (
            _onnx_session(module, self.spec, config.z_dim) if self.spec.backend == ONNXRUNTIME else None
        )

    def generate(self, class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, H, W, C) on the CPU, computed in padded blocks of `spec.compute_batch`.

        `class_indices` (B,) int64 in [0, num_classes); `latents` (B, z_dim) float32 (see `models.sampling`).
        Runs under torch.inference_mode(); bf16 autocast when `spec.dtype` is bf16 (CUDA).
        """
        if latents.ndim != 2 or latents.shape[1] != self.z_dim:
            raise ValueError(f"latents must be (B, {self.z_dim}), got {tuple(latents.shape)}")
        if class_indices.shape != (latents.shape[0],):
            raise ValueError(f"class_indices must be ({latents.shape[0]},), got {tuple(class_indices.shape)}")
        if len(class_indices) and (
            int(class_indices.min()) < 0 or int(class_indices.max()) >= self.config.num_classes
        ):
            raise ValueError(f"class indices must be in 0..{self.config.num_classes - 1}")
        size = len(latents)
        with torch.inference_mode():
            z = latents.to(self.device, torch.float32)
            y = class_indices.to(self.device, torch.int64)
            parts = [self._forward(*pair) for pair in padded_blocks(z, y, self.spec.compute_batch)]
            pixels = (
                torch.cat(parts)[:size]
                if parts
                else torch.empty(
                    0, self.resolution, self.resolution, self.channels, dtype=torch.uint8, device=self.device
                )
            )
            return pixels.cpu()  # (B, H, W, C)

    def _forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One block of exactly `compute_batch` rows → uint8 (b, H, W, C) on the device."""
        if self._session is not None:
            (images_np,) = self._session.run(None, {"z": z.numpy(), "y": y.numpy()})
            images = torch.from_numpy(images_np)  # (b, C, H, W) in [-1, 1]
        elif self.device.type == "cuda":
            # cuDNN's autotuner may pick another algorithm in another process: pixels must not depend on it.
            with (
                torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True),
                torch.autocast("cuda", dtype=DTYPES[self.spec.dtype], enabled=self.spec.dtype != "fp32"),
            ):
                images = self.module(z, y)
        else:
            images = self.module(z, y)  # (b, C, H, W) in [-1, 1]
        pixels = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous()  # (b, H, W, C)


def padded_blocks(z: torch.Tensor, y: torch.Tensor, block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`z` (B, z_dim) and `y` (B,) cut into blocks of exactly `block` rows, the last filled up with zero latents
    of class 0: the fixed compute batch that keeps an image's pixels independent of its neighbours."""
    padding = -len(z) % block
    if padding:
        z = torch.cat([z, z.new_zeros(padding, z.shape[1])])  # (B + P, z_dim)
        y = torch.cat([y, y.new_zeros(padding)])  # (B + P,)
    return [(z[start : start + block], y[start : start + block]) for start in range(0, len(z), block)]


def export_onnx(module: nn.Module, batch: int, z_dim: int) -> bytes:
    """The generator exported to ONNX at exactly `batch` rows: inputs `z` (b, z_dim), `y` (b,); output `images`."""
    z = torch.zeros(batch, z_dim)  # (b, z_dim)
    y = torch.zeros(batch, dtype=torch.long)  # (b,)
    return export_module_onnx(module, (z, y), ["z", "y"], ["images"])


def export_module_onnx(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str]
) -> bytes:
    """A fixed-shape module exported to ONNX bytes at the shapes of `inputs`."""
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript; these
        # fixed-shape, control-flow-free modules export the same either way.
        warnings.simplefilter("ignore", DeprecationWarning)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "module.onnx"
            torch.onnx.export(
                module, inputs, path, input_names=input_names, output_names=output_names, dynamo=False
            )
            return path.read_bytes()


def onnx_cpu_session(model: bytes) -> Any:
    """An ONNX Runtime CPU session of ONNX bytes: deterministic compute on, one session thread per torch
    thread (a worker process is single-threaded). Raises `ValueError` naming the extra when onnxruntime is
    not installed."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ValueError(
            "inference backend onnxruntime: the onnxruntime package is not installed "
            "(pip install 'catalogan[onnx]')"
        ) from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.use_deterministic_compute = True
    # Pool threads that spin while they wait for work burn a core the process's other threads (encode,
    # upload, the gate) need: with two torch threads, spinning cost the in-process worker 1.5 ms of CPU per
    # image (bench/gpu_bench.py section 3). Scheduling only: the results are the same.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _onnx_session(module: nn.Module, spec: InferenceSpec, z_dim: int) -> Any:
    """An ONNX Runtime CPU session of the generator, exported at exactly `spec.compute_batch` rows."""
    return onnx_cpu_session(export_onnx(module, spec.compute_batch, z_dim))


def load_generator(
    data: bytes,
    *,
    device: str | torch.device = "cpu",
    backend: str = EAGER,
    dtype: str | None = None,
    compute_batch: int | None = None,
    graph: str = PLAIN,
) -> LoadedGenerator:
    """The EMA generator from a checkpoint's bytes, in eval mode on `device`; raises `CheckpointError`.

    `dtype` defaults to fp32 on CPU and bf16 on CUDA, `compute_batch` to the device kind's default
    (`CPU_COMPUTE_BATCH`, `CUDA_COMPUTE_BATCH`); `backend` is one of `BACKENDS`, `graph` one of `GRAPHS`.
    """
    target = torch.device(device)
    spec = default_spec(target, backend=backend, dtype=dtype, compute_batch=compute_batch, graph=graph)
    payload = checkpoint_from_bytes(data)
    config = ModelConfig.from_dict(payload["model_config"])
    module = build_generator(config)
    try:
        module.load_state_dict(payload["generator_ema"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match its config: {exc}") from exc
    module.eval().requires_grad_(False).to(target)
    if spec.graph == FOLDED and isinstance(module, ConditionalGenerator):
        # The seed article's DCGAN has no up-blocks: folding it changes nothing, so it computes exactly as
        # plain under either name (and a file claiming either regenerates to the same pixels).
        module = fold_upsampling(module)
    return LoadedGenerator(module, config, sha256_hex(data), target, spec)


def load_generator_for(
    data: bytes, spec: InferenceSpec, *, device: str | torch.device | None = None
) -> LoadedGenerator:
    """A generator that computes exactly as `spec` says (what `verify --regenerate` uses).

    `device` defaults to the spec's device kind (`cuda` = the current GPU); raises `ValueError` when it is
    of another kind.
    """
    target = torch.device(device if device is not None else spec.device_kind)
    if target.type != spec.device_kind:
        raise ValueError(f"the spec needs a {spec.device_kind} device, got {target}")
    return load_generator(
        data,
        device=target,
        backend=spec.backend,
        dtype=spec.dtype,
        compute_batch=spec.compute_batch,
        graph=spec.graph,
    )


def random_generator_checkpoint(preset: str = "tiny", seed: int = 0) -> bytes:
    """A randomly initialised generator-only checkpoint, for tests only (never for real images)."""
    chosen = get_preset(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_generator(chosen.model)
    return checkpoint_to_bytes(
        {
            "kind": GENERATOR,
            "preset": preset,
            "model_config": chosen.model.to_dict(),
            "train_config": chosen.train.to_dict(),
            "step": 0,
            "generator_ema": module.state_dict(),
            "data_fingerprint": "random",
        }
    )
