"""The folded graph: nearest ×2 → conv3×3 computed as one stride-2 transposed conv, its own determinism key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.config import get_preset
from models.generator_cgan import ConditionalBatchNorm2d, FoldedUpBlock, UpBlock, fold_upsampling
from models.inference import (
    AUTO,
    FOLDED,
    ONNXRUNTIME,
    PLAIN,
    InferenceSpec,
    default_spec,
    load_generator,
    random_generator_checkpoint,
    resolve_graph,
)
from models.sampling import latents_for

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "fashion-cgan" / "generator.pt"


def _random_block(c_in: int, c_out: int, seed: int) -> UpBlock:
    """An UpBlock in float64 with random weights and batch-norm statistics (not the identity init)."""
    torch.manual_seed(seed)
    block = UpBlock(c_in, c_out, num_classes=3).double()
    norm: ConditionalBatchNorm2d = block.norm
    with torch.no_grad():
        norm.norm.running_mean.normal_()
        norm.norm.running_var.uniform_(0.5, 2.0)
        norm.gain.weight.normal_()
        norm.bias.weight.normal_()
        block.conv.bias.normal_()
    return block.eval()


@pytest.mark.parametrize(("c_in", "c_out", "size"), [(4, 3, 1), (5, 2, 3), (8, 6, 4), (3, 7, 7)])
def test_a_folded_block_is_the_same_function_as_upsample_then_conv(c_in: int, c_out: int, size: int) -> None:
    # Given an up-block with random weights, in float64 so that only the algebra can differ, not the rounding
    block = _random_block(c_in, c_out, seed=size)
    x = torch.randn(5, c_in, size, size, dtype=torch.float64)  # odd sizes and 1×1 check every border
    y = torch.tensor([0, 1, 2, 1, 0])
    # When it runs as trained and folded
    with torch.no_grad():
        plain, folded = block(x, y), FoldedUpBlock(block)(x, y)
    # Then the outputs have the same shape and agree to float64 rounding: the fold changes no output pixel,
    # borders included (one wrong tap would be off by the size of a weight, about 0.1)
    assert folded.shape == plain.shape == (5, c_out, 2 * size, 2 * size)
    assert torch.allclose(folded, plain, rtol=0, atol=1e-12), float((folded - plain).abs().max())


def test_folding_copies_the_generator_and_leaves_the_trained_one_as_it_was() -> None:
    # Given a generator as training builds it
    generator = load_generator(random_generator_checkpoint("tiny")).module
    before = {name: tensor.clone() for name, tensor in generator.state_dict().items()}
    # When it is folded
    folded = fold_upsampling(generator)
    # Then the copy's blocks are folded and in eval mode; the original keeps its blocks and weights
    assert all(isinstance(block, FoldedUpBlock) for block in folded.blocks)
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert all(isinstance(block, UpBlock) for block in generator.blocks)
    assert all(torch.equal(before[name], tensor) for name, tensor in generator.state_dict().items())


def test_only_a_3x3_conv_with_padding_1_folds() -> None:
    block = UpBlock(2, 2, num_classes=1)
    block.conv = nn.Conv2d(2, 2, 5, padding=2)
    with pytest.raises(ValueError, match="3×3 conv with padding 1"):
        FoldedUpBlock(block)


@pytest.mark.parametrize("backend", ["eager", ONNXRUNTIME])
def test_the_shipped_model_folded_is_within_one_grey_level_of_plain_in_a_few_pixels(backend: str) -> None:
    # Given the shipped generator loaded plain and folded on one backend, and 256 images of every category
    data = SHIPPED.read_bytes()
    plain = load_generator(data, backend=backend)
    folded = load_generator(data, backend=backend, graph=FOLDED)
    latents, classes = latents_for(17, range(256), plain.z_dim), torch.arange(256) % 10
    # When both render them
    a, b = plain.generate(classes, latents), folded.generate(classes, latents)
    # Then no pixel is more than one grey level apart and almost all are equal (measured: 19-25 of 2,048,000)
    assert int((a.int() - b.int()).abs().max()) <= 1
    assert int((a != b).sum()) <= a.numel() // 10_000, int((a != b).sum())
    # And each says how it computed: the folded spec names its graph
    assert plain.spec.graph == PLAIN and folded.spec.graph == FOLDED
    assert folded.spec.describe().endswith(", folded graph")


def _rendered(generator: object, batch: int, latents: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [
            generator.generate(classes[s : s + batch], latents[s : s + batch])  # type: ignore[attr-defined]
            for s in range(0, len(latents), batch)
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", ONNXRUNTIME])
def test_the_folded_graph_gives_the_same_pixels_at_batch_1_7_64_and_256(backend: str) -> None:
    # Given the shipped generator folded, and 96 images of every category
    generator = load_generator(SHIPPED.read_bytes(), backend=backend, graph=FOLDED)
    latents, classes = latents_for(31, range(96), generator.z_dim), torch.arange(96) % 10
    # When they are rendered in batches of 1, 7, 64 and 256, and again by a second load
    renders = {batch: _rendered(generator, batch, latents, classes) for batch in (1, 7, 64, 256)}
    again = load_generator(SHIPPED.read_bytes(), backend=backend, graph=FOLDED).generate(classes, latents)
    # Then every batch size and the reload give exactly the same pixels
    for batch in (1, 7, 64):
        assert torch.equal(renders[batch], renders[256]), f"{backend}: batch {batch} vs 256"
    assert torch.equal(again, renders[256])


def test_the_graph_is_in_the_spec_and_a_plain_file_keeps_its_old_fields() -> None:
    # Given a plain and a folded spec
    plain, folded = default_spec("cpu"), default_spec("cpu", graph=FOLDED)
    # Then the plain one writes exactly the four fields files had before the graph existed (their bytes are
    # unchanged), and four fields read back as plain
    assert plain.to_fields() == {
        "backend": "eager",
        "device_kind": "cpu",
        "dtype": "fp32",
        "compute_batch": "8",
    }
    assert InferenceSpec.from_fields(plain.to_fields()) == plain
    # And the folded one adds the graph and round-trips
    assert folded.to_fields()["graph"] == FOLDED
    assert InferenceSpec.from_fields(folded.to_fields()) == folded
    # And an unknown graph is refused naming it
    with pytest.raises(ValueError, match="inference graph 'fused': must be one of plain, folded"):
        InferenceSpec(graph="fused")


def test_auto_is_folded_on_the_cpu_and_plain_on_cuda() -> None:
    assert resolve_graph(AUTO, "cpu") == FOLDED
    assert resolve_graph(AUTO, "cuda:0") == PLAIN
    assert resolve_graph(PLAIN, "cpu") == PLAIN and resolve_graph(FOLDED, "cuda") == FOLDED


def test_a_generator_with_nothing_to_fold_computes_the_same_pixels_under_either_graph() -> None:
    # Given the seed article's DCGAN (no up-blocks of the conditional generator)
    from models.build import build_generator
    from models.checkpoint import GENERATOR, checkpoint_to_bytes

    preset = get_preset("seed-dcgan")
    data = checkpoint_to_bytes(
        {
            "kind": GENERATOR,
            "preset": "seed-dcgan",
            "model_config": preset.model.to_dict(),
            "train_config": preset.train.to_dict(),
            "step": 0,
            "generator_ema": build_generator(preset.model).state_dict(),
            "data_fingerprint": "random",
        }
    )
    # When it is loaded with each graph
    plain, folded = load_generator(data), load_generator(data, graph=FOLDED)
    # Then both compute the same pixels (folding nothing is the identity), so a file that claims either graph
    # regenerates to exactly its pixels: the claim cannot turn a forged file into "different graph"
    latents, classes = latents_for(3, range(16), plain.z_dim), torch.arange(16) % 10
    assert folded.spec.graph == FOLDED
    assert torch.equal(plain.generate(classes, latents), folded.generate(classes, latents))
