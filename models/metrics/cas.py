"""CAS, the Classification Accuracy Score (Ravuri & Vinyals, 2019).

Train a fresh classifier on generated images labelled with the category that was requested, then measure
its accuracy on the real test set. A generator whose images are right but all alike (mode collapse), or
varied but off-category, scores low, which FID alone can miss. The classifier is deliberately small and
trained briefly so CAS stays cheap on a CPU; it is compared with itself trained on real data (the
calibration row), not with the evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InsufficientSamplesError
from models.evaluator import EMBED_BATCH_SIZE, NUM_CLASSES, to_evaluator_input


@dataclass(frozen=True)
class CasConfig:
    """Hyperparameters of the CAS classifier's training."""

    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


class CasClassifier(nn.Module):
    """conv 16 → 32 → 64 with batch norm and max-pooling, then 10 logits; ~30 k parameters."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 64)):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.body = nn.Sequential(*layers)  # (B, 64, 4, 4)
        self.head = nn.Linear(64 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, (B, 1, 32, 32) → (B, 10)."""
        return self.head(self.body(x).flatten(1))


def train_cas_classifier(
    images: np.ndarray, labels: np.ndarray, config: CasConfig = CasConfig()
) -> CasClassifier:
    """Train a `CasClassifier` on uint8 images and int labels (plain AdamW, cosine decay, seeded)."""
    if len(images) < config.batch_size or len(images) != len(labels):
        raise InsufficientSamplesError(
            f"CAS needs at least {config.batch_size} labelled images, got {len(images)} images and {len(labels)} labels"
        )
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x = to_evaluator_input(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    model = CasClassifier()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps = config.epochs * (len(x) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(order) - config.batch_size + 1, config.batch_size):  # full batches only
            index = order[start : start + config.batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def classification_accuracy_score(
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    config: CasConfig = CasConfig(),
) -> float:
    """CAS: accuracy on the real test set of a classifier trained only on the generated images."""
    model = train_cas_classifier(generated_images, generated_labels, config)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test_images), EMBED_BATCH_SIZE):
            logits = model(to_evaluator_input(test_images[start : start + EMBED_BATCH_SIZE]))
            correct += int(
                (logits.argmax(dim=1).numpy() == test_labels[start : start + EMBED_BATCH_SIZE]).sum()
            )
    return correct / len(test_images)
