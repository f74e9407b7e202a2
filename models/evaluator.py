"""The evaluator: a small CNN trained on Fashion-MNIST whose penultimate layer is the metrics' feature space.

Inputs are 32×32 grayscale in [-1, 1], exactly what the GAN pipeline produces: uint8 [0, 255] is mapped
to [-1, 1] and Fashion-MNIST's 28×28 is padded by 2 px of background (-1). `features(x)` is the 128-d
embedding that FID_fm, KID and precision/recall use; `forward(x)` gives the 10 class logits that
conditional accuracy uses. The shipped weights (`models/weights/evaluator-fashion.pt`) are verified against
`evaluator-fashion.sha256` on every load; nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import EvaluatorWeightsError

INPUT_SIZE_PX = 32
FEATURE_DIM = 128
NUM_CLASSES = 10
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS_PATH = WEIGHTS_DIR / "evaluator-fashion.pt"
EMBED_BATCH_SIZE = 500  # images per forward pass when embedding; bounded memory on CPU


class EvaluatorCNN(nn.Module):
    """conv 32 → 64 → 64 → 128 → 128 with batch norm and max-pooling, then a 128-d embedding and 10 logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        self.body = nn.Sequential(
            *block(1, 32),
            nn.MaxPool2d(2),  # (B, 32, 16, 16)
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),  # (B, 64, 8, 8)
            *block(64, 128),
            nn.MaxPool2d(2),  # (B, 128, 4, 4)
            *block(128, 128),  # cheap at 4×4; a fifth conv buys accuracy for ~10% more time
        )
        self.embed = nn.Sequential(
            nn.Flatten(),  # (B, 2048)
            nn.Dropout(0.3),
            nn.Linear(128 * 4 * 4, feature_dim),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate embedding, (B, 1, 32, 32) in [-1, 1] → (B, 128), non-negative (after ReLU)."""
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, (B, 1, 32, 32) → (B, 10)."""
        return self.head(self.features(x))


def to_evaluator_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) → float (N, 1, 32, 32) in [-1, 1], the evaluator's input.

    28×28 is padded with 2 px of background (-1) like the GAN pipeline; RGB is converted to luma
    (ITU-R 601); any other size is resized bilinearly to 32×32.
    """
    if isinstance(images, torch.Tensor):
        x = images
    else:
        array = np.asarray(images)
        # torch refuses to wrap read-only arrays (np.frombuffer, memory maps) without a warning: copy those.
        x = torch.from_numpy(array if array.flags.writeable else array.copy())
    if x.dtype != torch.uint8:
        raise ValueError(f"evaluator input must be uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(-1)  # (N, H, W, 1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"evaluator input must be (N, H, W) or (N, H, W, 1|3), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()  # (N, C, H, W) in [0, 255]
    if x.shape[1] == 3:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = (x * luma).sum(dim=1, keepdim=True)  # (N, 1, H, W)
    x = x / 127.5 - 1.0
    height, width = x.shape[-2:]
    if (height, width) == (28, 28):
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # (N, 1, 32, 32)
    elif (height, width) != (INPUT_SIZE_PX, INPUT_SIZE_PX):
        x = F.interpolate(x, size=(INPUT_SIZE_PX, INPUT_SIZE_PX), mode="bilinear", align_corners=False)
    return x.contiguous()


def canonical_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images as the evaluator sees them, back in uint8: (N, 32, 32) grayscale, 28×28 padded with background."""
    x = to_evaluator_input(images)  # (N, 1, 32, 32) in [-1, 1]
    return ((x[:, 0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def augment(x: torch.Tensor, generator: torch.Generator, max_shift_px: int = 2) -> torch.Tensor:
    """Random horizontal flip and translation by up to `max_shift_px`, filling with background (-1)."""
    batch = x.shape[0]
    flip = torch.rand(batch, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if max_shift_px <= 0:
        return x
    padded = F.pad(x, (max_shift_px,) * 4, value=-1.0)  # (B, 1, 32 + 2s, 32 + 2s)
    shifts = torch.randint(0, 2 * max_shift_px + 1, (batch, 2), generator=generator)
    size = x.shape[-1]
    return torch.stack(
        [padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(shifts.tolist())]
    )


@dataclass(frozen=True)
class EvaluatorTrainingConfig:
    """Hyperparameters of `train_evaluator`; the defaults reproduce the shipped weights."""

    epochs: int = 15
    batch_size: int = 128
    max_learning_rate: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    max_shift_px: int = 2
    seed: int = 0
    device: str = "cpu"  # "cuda" trains the same recipe on a GPU (cuDNN set deterministic)


@dataclass
class TrainedEvaluator:
    """What `train_evaluator` returns: the model in eval mode and what was measured while training it."""

    model: EvaluatorCNN
    test_accuracy: float
    seconds_per_epoch: list[float] = field(default_factory=list)
    test_accuracy_per_epoch: list[float] = field(default_factory=list)


def train_evaluator(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    config: EvaluatorTrainingConfig = EvaluatorTrainingConfig(),
    *,
    on_epoch: Callable[[int, float, float, float], None] | None = None,
) -> TrainedEvaluator:
    """Train an `EvaluatorCNN` on uint8 images + int labels; AdamW with a one-cycle schedule, seeded.

    `on_epoch(epoch, train_loss, test_accuracy, seconds)` is called after every epoch (for progress output).
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation stay on the CPU
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    x_train = to_evaluator_input(train_images)
    y_train = torch.as_tensor(train_labels, dtype=torch.int64)
    model = EvaluatorCNN().to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.max_learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_learning_rate, epochs=config.epochs, steps_per_epoch=steps_per_epoch
    )
    result = TrainedEvaluator(model=model, test_accuracy=0.0)
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = augment(x_train[index], generator, config.max_shift_px).to(device)
            loss = F.cross_entropy(
                model(batch), y_train[index].to(device), label_smoothing=config.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(index)
        accuracy = evaluate_accuracy(model, test_images, test_labels)
        seconds = time.perf_counter() - started
        result.seconds_per_epoch.append(seconds)
        result.test_accuracy_per_epoch.append(accuracy)
        if on_epoch is not None:
            on_epoch(epoch, total_loss / len(order), accuracy, seconds)
    model.cpu().eval()
    result.test_accuracy = result.test_accuracy_per_epoch[-1] if result.test_accuracy_per_epoch else 0.0
    return result


@torch.inference_mode()
def embed(model: EvaluatorCNN, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 128) float64 and logits (N, 10) float64 of uint8 images, in batches, eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    features, logits = [], []
    for start in range(0, len(images), EMBED_BATCH_SIZE):
        x = to_evaluator_input(images[start : start + EMBED_BATCH_SIZE]).to(device)
        f = model.features(x)
        features.append(f.double().cpu().numpy())
        logits.append(model.head(f).double().cpu().numpy())
    model.train(was_training)
    if not features:
        return np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_CLASSES))
    return np.concatenate(features), np.concatenate(logits)


def evaluate_accuracy(model: EvaluatorCNN, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the model on uint8 images and their int labels."""
    _, logits = embed(model, images)
    return float((logits.argmax(axis=1) == np.asarray(labels)).mean())


def sha256_path_for(weights_path: Path) -> Path:
    """Where the recorded sha256 of a weights file lives: the same name with `.sha256`."""
    return weights_path.with_suffix(".sha256")


def save_evaluator(model: EvaluatorCNN, path: Path | str) -> str:
    """Write the state_dict to `path` and its sha256 next to it; return the hex digest."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({name: t.detach().cpu() for name, t in model.state_dict().items()}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha256_path_for(path).write_text(f"{digest}  {path.name}\n")
    return digest


def load_evaluator(
    path: Path | str = DEFAULT_WEIGHTS_PATH, expected_sha256: str | None = None
) -> EvaluatorCNN:
    """Load evaluator weights after checking their sha256 (given, or read from the `.sha256` file beside them).

    Raises `EvaluatorWeightsError` when the file is missing or the hash does not match.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if expected_sha256 is None:
            expected_sha256 = sha256_path_for(path).read_text().split()[0]
    except OSError as exc:
        raise EvaluatorWeightsError(
            f"{exc.filename}: cannot read evaluator weights ({exc.strerror}); "
            "run `catalogan evaluator train` to recreate them"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise EvaluatorWeightsError(
            f"{path}: sha256 {actual} does not match the recorded {expected_sha256}; "
            "refusing to load evaluator weights that are not the recorded ones"
        )
    model = EvaluatorCNN()
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.eval()


@lru_cache(maxsize=1)
def default_evaluator() -> EvaluatorCNN:
    """The shipped evaluator, loaded and verified once per process."""
    return load_evaluator(DEFAULT_WEIGHTS_PATH)
