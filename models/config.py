"""Hyperparameters as frozen dataclasses, with named presets saved in every checkpoint.

`ModelConfig` says what the generator and discriminator are (and is all inference needs);
`TrainConfig` says how they are trained. A preset is a (ModelConfig, TrainConfig) pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from models.errors import UnknownPresetError

Architecture = Literal["cgan", "dcgan-seed"]
LossName = Literal["hinge", "non-saturating"]


@dataclass(frozen=True)
class ModelConfig:
    """The networks: architecture, image shape, latent size, widths, and the category slugs it was trained on."""

    architecture: Architecture = "cgan"
    resolution: int = 32  # px, square; the generator's output size
    channels: int = 1  # 1 = grayscale, 3 = RGB
    z_dim: int = 128
    num_classes: int = 10
    g_width: int = 32  # channels of the generator's last block; earlier blocks double it
    d_width: int = 32  # channels of the discriminator's first block; later blocks double it
    embed_dim: int = (
        0  # 0 = conditional batch norm only; >0 = also a learned class embedding concatenated to z
    )
    spectral_norm: bool = True  # spectral norm on every discriminator layer
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (tuples become lists)."""
        data = asdict(self)
        data["categories"] = list(self.categories)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are ignored so newer checkpoints still load."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["categories"] = tuple(values.get("categories", ()))
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: loss, optimisers (TTUR), EMA, augmentation, batch and seed."""

    loss: LossName = "hinge"
    batch_size: int = 64  # images per step per worker
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.999
    ema_decay: float = 0.999
    ema_start_step: int = 0  # before it the EMA warms up with decay min(ema_decay, (1 + s) / (10 + s))
    diffaugment: tuple[str, ...] = ()  # any of "translation", "cutout"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        data = asdict(self)
        data["diffaugment"] = list(self.diffaugment)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["diffaugment"] = tuple(values.get("diffaugment", ()))
        return cls(**values)


@dataclass(frozen=True)
class Preset:
    """A named recipe: the networks and how to train them."""

    name: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""


FASHION_CATEGORIES: tuple[str, ...] = (
    "tshirt-top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="fashion-cgan",
            model=ModelConfig(
                architecture="cgan",
                resolution=32,
                channels=1,
                z_dim=128,
                g_width=48,
                d_width=64,
                categories=FASHION_CATEGORIES,
            ),
            train=TrainConfig(
                loss="hinge", batch_size=64, lr_g=1e-4, lr_d=4e-4, beta1=0.0, beta2=0.999, ema_decay=0.999
            ),
            description="Class-conditional GAN for Fashion-MNIST (28 px padded to 32): conditional batch norm G, "
            "projection D with spectral norm, hinge loss, TTUR, EMA.",
        ),
        Preset(
            name="seed-dcgan",
            model=ModelConfig(
                architecture="dcgan-seed",
                resolution=32,
                channels=1,
                z_dim=100,
                g_width=64,
                d_width=32,
                spectral_norm=False,
                categories=FASHION_CATEGORIES,
            ),
            train=TrainConfig(
                loss="non-saturating",
                batch_size=64,
                lr_g=1e-4,
                lr_d=1e-4,
                beta1=0.9,
                beta2=0.999,
                ema_decay=0.0,
            ),
            description="The seed article's unconditional Keras DCGAN, fixed so it runs (stride 2, BCE, Adam 1e-4); "
            "a baseline to beat.",
        ),
        Preset(
            name="photo-cgan-64",
            model=ModelConfig(
                architecture="cgan", resolution=64, channels=3, z_dim=128, g_width=64, d_width=64, embed_dim=0
            ),
            train=TrainConfig(
                loss="hinge",
                batch_size=32,
                lr_g=1e-4,
                lr_d=4e-4,
                beta1=0.0,
                beta2=0.999,
                ema_decay=0.999,
                diffaugment=("translation", "cutout"),
            ),
            description="64×64 RGB class-conditional GAN for users' own photo folders (few images: DiffAugment on).",
        ),
        Preset(
            name="tiny",
            model=ModelConfig(
                architecture="cgan",
                resolution=8,
                channels=1,
                z_dim=8,
                num_classes=3,
                g_width=4,
                d_width=4,
                categories=("a", "b", "c"),
            ),
            train=TrainConfig(
                loss="hinge", batch_size=4, ema_decay=0.9, diffaugment=("translation", "cutout")
            ),
            description="A few-hundred-parameter model for tests: 8×8 gray, 3 classes.",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; raise `UnknownPresetError` listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def with_categories(model: ModelConfig, categories: tuple[str, ...]) -> ModelConfig:
    """The same networks for another category list (a folder of photos brings its own categories)."""
    return replace(model, categories=categories, num_classes=len(categories))
