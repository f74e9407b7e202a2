"""`load_generator` / `generate`: the interface generation workers rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import checkpoint_to_bytes
from models.errors import CheckpointError
from models.inference import (
    CPU_COMPUTE_BATCH,
    CUDA_COMPUTE_BATCH,
    ONNXRUNTIME,
    InferenceSpec,
    LoadedGenerator,
    default_spec,
    load_generator,
    load_generator_for,
    random_generator_checkpoint,
)
from models.sampling import latents_for


def test_generate_returns_uint8_images_of_the_configured_shape() -> None:
    # Given a random tiny generator checkpoint
    generator = load_generator(random_generator_checkpoint("tiny", seed=0))
    # When three images are generated
    latents = latents_for(7, [0, 1, 2], generator.z_dim)
    images = generator.generate(torch.tensor([0, 1, 2]), latents)
    # Then they are uint8 (B, H, W, C) on the CPU, and the metadata matches the preset
    assert images.dtype == torch.uint8
    assert images.shape == (3, generator.resolution, generator.resolution, generator.channels)
    assert images.device.type == "cpu"
    assert generator.categories == ("a", "b", "c")
    assert len(generator.checkpoint_sha256) == 64


def test_an_image_depends_on_its_latent_and_category_not_its_batch() -> None:
    # Given one generator and latents for images 0..5
    generator = load_generator(random_generator_checkpoint("tiny", seed=1))
    latents = latents_for(11, range(6), generator.z_dim)
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    # When the same images are made in one batch and in two
    whole = generator.generate(classes, latents)
    halves = torch.cat(
        [generator.generate(classes[:2], latents[:2]), generator.generate(classes[2:], latents[2:])]
    )
    # Then the pixels are identical, and a reload gives the same pixels again
    assert torch.equal(whole, halves)
    again = load_generator(random_generator_checkpoint("tiny", seed=1)).generate(classes, latents)
    assert torch.equal(whole, again)


def test_bad_inputs_are_refused() -> None:
    generator = load_generator(random_generator_checkpoint("tiny"))
    with pytest.raises(ValueError, match="class indices"):
        generator.generate(torch.tensor([5]), latents_for(0, [0], generator.z_dim))
    with pytest.raises(ValueError, match="latents"):
        generator.generate(torch.tensor([0]), torch.zeros(1, generator.z_dim + 1))


def test_unreadable_or_foreign_checkpoints_raise_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="unreadable"):
        load_generator(b"not a checkpoint")
    payload = {"kind": "generator", "model_config": {}}
    with pytest.raises(CheckpointError, match="missing generator_ema"):
        load_generator(checkpoint_to_bytes(payload))


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "fashion-cgan" / "generator.pt"


def _rendered(
    generator: LoadedGenerator, batch: int, latents: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    return torch.cat(
        [
            generator.generate(classes[s : s + batch], latents[s : s + batch])
            for s in range(0, len(latents), batch)
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", ONNXRUNTIME])
def test_the_shipped_model_gives_the_same_pixels_at_batch_1_7_64_and_256(backend: str) -> None:
    # Given the shipped generator (oneDNN picked another kernel for a batch of one before the fixed compute
    # batch: 18 of 2,000 images came out a grey level apart) and 96 images of every category
    generator = load_generator(SHIPPED.read_bytes(), backend=backend)
    latents = latents_for(31, range(96), generator.z_dim)
    classes = torch.arange(96) % 10
    # When they are rendered in batches of 1, 7, 64 and 256
    renders = {batch: _rendered(generator, batch, latents, classes) for batch in (1, 7, 64, 256)}
    # Then every batch size gives exactly the same pixels
    for batch in (1, 7, 64):
        differing = int((renders[batch] != renders[256]).reshape(96, -1).any(dim=1).sum())
        assert differing == 0, f"{backend}: batch {batch} vs 256: {differing} images differ"


def test_padding_never_leaks_into_an_image() -> None:
    # Given one image rendered alone (7 padding rows of class 0 fill its compute block)
    generator = load_generator(SHIPPED.read_bytes())
    latents = latents_for(5, range(8), generator.z_dim)
    alone = generator.generate(torch.tensor([3]), latents[:1])
    # When it shares its block with 7 real images of other classes instead
    crowded = generator.generate(torch.tensor([3, 1, 2, 4, 5, 6, 7, 9]), latents)
    # Then its pixels are the same
    assert torch.equal(alone[0], crowded[0])


def test_the_inference_spec_is_explicit_and_checked() -> None:
    # Given the defaults per device kind
    assert default_spec("cpu") == InferenceSpec("eager", "cpu", "fp32", CPU_COMPUTE_BATCH)
    assert default_spec("cuda:1") == InferenceSpec("eager", "cuda", "bf16", CUDA_COMPUTE_BATCH)
    assert default_spec("cuda", dtype="fp32").dtype == "fp32"
    # Then a loaded generator says how it computes, and the spec round-trips through provenance fields
    generator = load_generator(random_generator_checkpoint("tiny"), compute_batch=4)
    assert generator.spec.describe() == "eager on cpu, fp32, compute batch 4"
    assert InferenceSpec.from_fields(generator.spec.to_fields()) == generator.spec
    # And impossible specs are refused naming what is wrong
    for fields, match in (
        (("tensorrt", "cpu", "fp32", 8), "backend"),
        (("eager", "tpu", "fp32", 8), "device kind"),
        (("eager", "cpu", "bf16", 8), "bf16"),
        (("onnxruntime", "cuda", "bf16", 8), "onnxruntime"),
        (("eager", "cpu", "fp32", 0), "compute batch"),
    ):
        with pytest.raises(ValueError, match=match):
            InferenceSpec(*fields)
    with pytest.raises(ValueError, match="cuda device"):
        load_generator_for(random_generator_checkpoint("tiny"), default_spec("cuda"), device="cpu")


@pytest.mark.slow
def test_onnxruntime_is_a_different_backend_with_its_own_stable_pixels() -> None:
    # Given the shipped generator loaded twice with the onnxruntime backend, and once eager
    data = SHIPPED.read_bytes()
    first, second = load_generator(data, backend=ONNXRUNTIME), load_generator(data, backend=ONNXRUNTIME)
    latents, classes = latents_for(9, range(64), 128), torch.arange(64) % 10
    # When the same images are rendered
    a, b = first.generate(classes, latents), second.generate(classes, latents)
    # Then the same backend gives the same bytes, and its spec names it
    assert torch.equal(a, b)
    assert first.spec.backend == ONNXRUNTIME and "onnxruntime on cpu" in first.spec.describe()
    # And eager pixels are within a grey level of them (another backend: not the same determinism key)
    eager = load_generator(data).generate(classes, latents)
    assert int((eager.int() - a.int()).abs().max()) <= 1


def test_auto_is_onnxruntime_on_a_cpu_that_has_it_and_eager_on_cuda_or_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given the worker setting `auto` / When resolved for a device / Then onnxruntime on a CPU where it and
    its exporter import, eager on CUDA or when either is missing, and an explicit backend unchanged."""
    import importlib.util

    from models.inference import AUTO, EAGER, resolve_backend

    assert resolve_backend(AUTO, "cpu") == ONNXRUNTIME  # the dev install has the server extra's onnxruntime
    assert resolve_backend(AUTO, "cuda:0") == EAGER
    assert resolve_backend(EAGER, "cpu") == EAGER and resolve_backend(ONNXRUNTIME, "cpu") == ONNXRUNTIME
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name, *a)
    )
    assert resolve_backend(AUTO, "cpu") == EAGER
