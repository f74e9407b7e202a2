"""The per-image quality gate (`quality_gate: {min_confidence, max_redraws}`) and the memorization gate.

Each image is scored by the project's evaluator CNN (`models.evaluator`) as its softmax probability of the
requested category (the model version's class index). When the model version has a memorization index
(`models.memorization_index`, built at the end of training), an image whose evaluator features sit closer to
a training image than the calibrated threshold is a *near copy* and fails the gate too, whatever its score
(such model versions are gated on every job: `min_confidence` 0 and 3 redraws unless the job says more).
A failed image is redrawn from the latent of (seed, index, redraw) for redraw = 1, 2, … `max_redraws`
(`models.sampling.latents_for(redraws=...)`); an image that still fails after the last redraw is
*rejected*: its row says so (status `rejected`, score, redraws, and the reason) and no object is stored.
An interpolation frame renders the same pixels whatever its redraw, so it is scored once and, failing,
rejected with 0 redraws (and its job is charged no redraws: `JobSpec.redraws_per_image`).
Everything is a function of (model version, seed, index, category, gate, inference spec) and the shipped
evaluator, run in fixed compute blocks on the worker's device and on the generator's backend (ONNX Runtime
for an onnxruntime spec; `EvaluatorScorer`); a chunk scores the same blocks on every run, so the same job
twice gives the same scores, redraws and rejections.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.latent_control import redraw_moves
from models.memorization_index import MemorizationIndex

if TYPE_CHECKING:
    from models.evaluator import EvaluatorCNN
from workers.errors import WorkerConfigError
from workers.generator_cache import GeneratorLike
from workers.pixels import render_pixels

GATE_OPTION = "quality_gate"
DEFAULT_REDRAWS = 3
NEAR_COPY_ERROR = "near copy of a training image (memorization gate)"
LOW_SCORE_ERROR = "below the quality gate's min_confidence after every redraw"


@dataclass(frozen=True, slots=True)
class Scores:
    """A batch's evaluator confidence for the requested category, and which images are near copies."""

    confidence: np.ndarray  # (B,) float64
    near_copy: np.ndarray  # (B,) bool


Scorer = Callable[[np.ndarray, int], Scores]  # (pixels (B, H, W, C) uint8, class index) -> Scores


@dataclass(frozen=True, slots=True)
class GateSettings:
    """A job's quality gate."""

    min_confidence: float
    max_redraws: int


@dataclass(frozen=True, slots=True)
class GatedImage:
    """One image after the gate: its final pixels (None when rejected), score, redraw number and reason."""

    index: int
    pixels: np.ndarray | None
    score: float | None  # None when the job has no gate
    redraws: int
    error: str | None = None

    @property
    def rejected(self) -> bool:
        """True when every draw failed the gate."""
        return self.pixels is None


def gate_settings(options: Mapping[str, Any], *, memorization_index: bool = False) -> GateSettings | None:
    """The gate a job runs under: its `quality_gate` option, a memorization-only gate, or None."""
    gate = options.get(GATE_OPTION)
    if not gate:
        return GateSettings(0.0, DEFAULT_REDRAWS) if memorization_index else None
    try:
        return GateSettings(float(gate["min_confidence"]), int(gate["max_redraws"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkerConfigError(
            f"job option {GATE_OPTION}: {gate!r} is not {{min_confidence, max_redraws}}"
        ) from exc


class EvaluatorScorer:
    """Scores a batch in memory on the worker's device: evaluator confidence and near copies, fp32, deterministic.

    The evaluator runs in fixed, padded blocks of `compute_batch` rows (like the generator: one kernel
    choice whatever the batch; the images beside one in its block still move its score by about 1e-7, which
    `tests/workers/test_quality_gate.py` bounds). The near-copy check is exact and pruned (`_near`): a
    product against the training features projected on their top `PROJECTED_DIMS` principal axes gives a
    lower bound on every distance, and only the (image, training image) pairs whose bound is under the
    threshold, with a margin that covers float32 rounding, get their full distance. On the shipped index
    (60,000 × 128) that is about one pair in 40,000 and a quarter of the full product's CPU time
    (docs/performance.md, "The near-copy check, pruned"). Everything stays on the device, computed once per
    index. No Python loop per image. On CUDA cuDNN is pinned to deterministic algorithms and no autocast is
    used: the gate's decisions do not depend on the device's mood. With `backend="onnxruntime"` (CPU only)
    the evaluator runs as one ONNX Runtime graph with deterministic compute: scores within about 1e-6 of
    eager's, bit-identical from run to run.
    """

    def __init__(
        self,
        index: MemorizationIndex | None = None,
        *,
        device: str = "cpu",
        compute_batch: int | None = None,
        backend: str = "eager",
    ) -> None:
        from models.evaluator import default_evaluator
        from models.inference import BACKENDS, CPU_COMPUTE_BATCH, CUDA_COMPUTE_BATCH, ONNXRUNTIME

        self.device = torch.device(device)
        if backend not in BACKENDS:
            raise ValueError(f"evaluator backend {backend!r}: must be one of {', '.join(BACKENDS)}")
        if backend == ONNXRUNTIME and self.device.type != "cpu":
            raise ValueError("evaluator backend onnxruntime: only on cpu")
        self.backend = backend
        shared = default_evaluator()  # cached per process, on the CPU: a copy goes to any other device
        self.model = (shared if self.device.type == "cpu" else copy.deepcopy(shared).to(self.device)).eval()
        self.compute_batch = compute_batch or (
            CUDA_COMPUTE_BATCH if self.device.type == "cuda" else CPU_COMPUTE_BATCH
        )
        # ONNX Runtime runs the evaluator in about half eager's CPU time at one thread (it fuses each conv
        # with its batch norm and ReLU; docs/performance.md, "The gate's evaluator on ONNX Runtime")
        self._session = _evaluator_session(self.model, self.compute_batch) if backend == ONNXRUNTIME else None
        self.pruning: _PrunedSearch | None = (
            _PrunedSearch(index.train_features, index.threshold, self.device) if index is not None else None
        )

    def __call__(self, pixels: np.ndarray | torch.Tensor, class_index: int) -> Scores:
        """Scores of uint8 pixels (B, H, W, C) for the requested class index."""
        from models.evaluator import to_evaluator_input

        x = to_evaluator_input(pixels)  # (B, 1, 32, 32) on the CPU
        size, block = len(x), self.compute_batch
        padding = -size % block
        if padding:
            x = torch.cat([x, x.new_full((padding, *x.shape[1:]), -1.0)])  # blank rows fill the last block
        confidence, near = [], []
        with torch.inference_mode(), _deterministic(self.device):
            x = x.to(self.device)
            for start in range(0, len(x), block):
                features, logits = self._evaluate(x[start : start + block])  # (b, D) float32, (b, classes)
                confidence.append(torch.softmax(logits.double(), dim=1)[:, class_index])
                near.append(self._near(features))
            scores = torch.cat(confidence)[:size].cpu().numpy()
            copies = torch.cat(near)[:size].cpu().numpy()
        return Scores(np.asarray(scores, dtype=np.float64), np.asarray(copies, dtype=bool))

    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (b, D) and logits (b, classes) of one block of `compute_batch` rows, float32."""
        if self._session is not None:
            features, logits = self._session.run(None, {"x": x.numpy()})
            return torch.from_numpy(features), torch.from_numpy(logits)
        features = self.model.features(x)
        return features, self.model.head(features)

    def _near(self, features: torch.Tensor) -> torch.Tensor:
        """True per row whose nearest training feature is closer than the index's threshold."""
        if self.pruning is None:
            return torch.zeros(len(features), dtype=torch.bool, device=features.device)
        return self.pruning.near(features)


# Principal axes of the training features the pruned near-copy search projects on: 16 of the evaluator's 128
# dimensions cost the least in `bench/bench_near_copy.py` (8 leave too many candidate pairs, 32 cost more
# per product).
PROJECTED_DIMS = 16
# Relative float32 error allowed for a squared distance computed as |f|² + |r|² - 2 f·r, per unit of
# |f|² + |r|²: a 128-term float32 dot product is within about 128 · 2⁻²⁴ ≈ 8e-6 of it, so 1e-4 covers the
# full-search arithmetic and the projected bound together with a wide margin.
ROUNDING_MARGIN = 1e-4


class _PrunedSearch:
    """Whether any training feature lies within `threshold` of a query: a projected lower bound, then exact
    distances for the pairs it cannot rule out.

    For an orthonormal basis P (D, k), |P^T (f - r)| <= |f - r| for every pair, so a pair whose projected
    squared distance is at least `threshold²` plus the rounding margin cannot be a near copy under the full
    search's own float32 arithmetic either. The pairs left get |f|² + |r|² - 2 f·r, the full search's
    formula: a decision differs from the unpruned search's only for a distance within float32 rounding of
    the threshold. P is the top-k eigenvectors of the features' covariance, computed in float64 once. A
    block whose bound leaves more pairs than one query has training rows (a threshold far above the
    calibrated one) takes the full product instead: the memory and time of a block stay those of the
    unpruned search at worst.
    """

    def __init__(self, train_features: Any, threshold: float, device: torch.device) -> None:
        reference = torch.as_tensor(train_features, dtype=torch.float32)  # (N, D) on the CPU
        dims = min(PROJECTED_DIMS, reference.shape[1])
        centred = reference.double() - reference.double().mean(dim=0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues, (D, D)
        self.basis = vectors[:, -dims:].flip(1).float().contiguous().to(device)  # (D, k)
        self.reference = reference.to(device)  # (N, D)
        self.reference_sq = (self.reference * self.reference).sum(dim=1)  # (N,)
        projected = self.reference @ self.basis  # (N, k)
        ones = torch.ones(len(projected), 1, device=device)
        # [-2 Pr, |Pr|², 1] as columns: [Pf, 1, |Pf|²] @ this is |Pf - Pr|², one product per block.
        self.projected = torch.cat(
            [-2.0 * projected, (projected * projected).sum(1, keepdim=True), ones], 1
        ).T
        self.projected = self.projected.contiguous()  # (k + 2, N)
        self.threshold = float(threshold)
        self.max_reference_sq = float(self.reference_sq.max()) if len(reference) else 0.0

    def candidates(self, features: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        """(b, N) bool: the pairs the projected bound cannot rule out (`squared`: |f|² per row)."""
        projected = features @ self.basis  # (b, k)
        augmented = torch.cat(
            [projected, torch.ones_like(squared)[:, None], (projected * projected).sum(1, keepdim=True)], 1
        )
        bound = augmented @ self.projected  # (b, N): |P^T (f - r)|² <= |f - r|²
        limit = self.threshold**2 + ROUNDING_MARGIN * (squared + self.max_reference_sq)  # (b,)
        return bound < limit[:, None]

    def near(self, features: torch.Tensor) -> torch.Tensor:
        """(b,) bool: True where some training feature is closer than the threshold."""
        near = torch.zeros(len(features), dtype=torch.bool, device=features.device)
        if self.threshold <= 0 or not len(self.reference):
            return near  # nothing is closer than 0
        squared = (features * features).sum(dim=1)  # (b,)
        rows, cols = self.candidates(features, squared).nonzero(as_tuple=True)
        if len(rows) > len(self.reference):  # a loose bound (a large threshold): the full product costs less
            d2 = squared[:, None] + self.reference_sq[None, :] - 2.0 * features @ self.reference.T  # (b, N)
            return d2.min(dim=1).values.clamp_min(0.0).sqrt().double() < self.threshold
        if len(rows):
            dots = (features[rows] * self.reference[cols]).sum(dim=1)
            d2 = squared[rows] + self.reference_sq[cols] - 2.0 * dots
            near[rows[d2.clamp_min(0.0).sqrt().double() < self.threshold]] = True
        return near


class _FeaturesAndLogits(torch.nn.Module):
    """The evaluator as one graph with both outputs the gate reads (what ONNX Runtime runs)."""

    def __init__(self, model: EvaluatorCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        return features, self.model.head(features)


def _evaluator_session(model: EvaluatorCNN, compute_batch: int) -> Any:
    """An ONNX Runtime CPU session of the evaluator at exactly `compute_batch` rows: in `x`, out features, logits."""
    from models.inference import export_module_onnx, onnx_cpu_session

    example = torch.zeros(compute_batch, 1, 32, 32)
    data = export_module_onnx(_FeaturesAndLogits(model).eval(), (example,), ["x"], ["features", "logits"])
    return onnx_cpu_session(data)


def _deterministic(device: torch.device) -> Any:
    """cuDNN pinned to deterministic algorithms on CUDA; nothing to pin on the CPU."""
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True)
    return contextlib.nullcontext()


def evaluator_scorer(
    index: MemorizationIndex | None = None, *, device: str = "cpu", backend: str = "eager"
) -> Scorer:
    """Score with the shipped evaluator on `device` and `backend`; near copies from `index` when given."""
    return EvaluatorScorer(index, device=device, backend=backend)


def apply_gate(
    generator: GeneratorLike,
    scorer: Scorer,
    gate: GateSettings,
    *,
    seed: int,
    class_index: int,
    indices: Sequence[int],
    pixels: np.ndarray,
    control: Mapping[str, Any] | None = None,
) -> list[GatedImage]:
    """Score a batch; redraw the images that fail round by round; reject what never passes.

    `control` is the job's latent recipe (`workers.pixels.render_pixels`), used for the redraws too.

    The bookkeeping is array-wide (masks over the batch); only the final list is built per image.
    """
    current = np.array(pixels, copy=True)  # (B, H, W, C): redrawn rows are replaced in place
    first = scorer(current, class_index)
    scores = np.asarray(first.confidence, dtype=np.float64).copy()  # (B,)
    near = np.asarray(first.near_copy, dtype=bool).copy()  # (B,)
    redraws = np.zeros(len(indices), dtype=np.int64)
    positions = np.asarray(indices, dtype=np.int64)
    failing = np.flatnonzero(near | (scores < gate.min_confidence))
    # An interpolation frame renders the same pixels whatever its redraw: scored once, rejected if it fails.
    rounds = gate.max_redraws if redraw_moves(control) else 0
    for redraw in range(1, rounds + 1):
        if not len(failing):
            break
        current[failing] = render_pixels(
            generator,
            seed,
            class_index,
            positions[failing].tolist(),
            redraws=[redraw] * len(failing),
            control=control,
        )  # (F, H, W, C)
        again = scorer(current[failing], class_index)
        scores[failing], near[failing], redraws[failing] = again.confidence, again.near_copy, redraw
        failing = failing[near[failing] | (scores[failing] < gate.min_confidence)]
    rejected = np.zeros(len(indices), dtype=bool)
    rejected[failing] = True
    return [
        GatedImage(
            index,
            None,
            float(scores[row]),
            int(redraws[row]),
            NEAR_COPY_ERROR if near[row] else LOW_SCORE_ERROR,
        )
        if rejected[row]
        else GatedImage(index, current[row], float(scores[row]), int(redraws[row]))
        for row, index in enumerate(indices)
    ]
