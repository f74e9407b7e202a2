"""Latents from a job's recipe (truncation, variation, interpolation): pure functions of seeds."""

from __future__ import annotations

import torch

from models.latent_control import render_latents, slerp, source_latent
from models.sampling import latents_for

Z_DIM = 16


def _source(seed: int, index: int, control: dict[str, object] | None = None) -> dict[str, object]:
    source: dict[str, object] = {"job_id": "j" * 32, "index": index, "seed": seed, "redraw": 0}
    if control:
        source["control"] = control
    return source


def test_a_job_without_a_recipe_gets_todays_latents() -> None:
    """Given no recipe (and ψ = 1.0) / When latents are rendered / Then they are latents_for's, bit for bit."""
    expected = latents_for(7, [0, 5, 9], Z_DIM, redraws=[0, 1, 0])
    assert torch.equal(render_latents(None, 7, [0, 5, 9], Z_DIM, [0, 1, 0]), expected)
    assert torch.equal(render_latents({"truncation": 1.0}, 7, [0, 5, 9], Z_DIM, [0, 1, 0]), expected)


def test_truncation_scales_each_latent_by_psi() -> None:
    """Given ψ = 0.5 / When latents are rendered / Then each is half of the plain latent."""
    plain = latents_for(7, [0, 1], Z_DIM)
    truncated = render_latents({"truncation": 0.5}, 7, [0, 1], Z_DIM)
    assert torch.allclose(truncated, plain * 0.5)
    assert truncated.dtype == torch.float32


def test_a_variation_of_strength_zero_is_its_source_latent_under_the_sources_psi() -> None:
    """Given a source made with ψ 0.7 / When a strength-0 variation inherits ψ 0.7 / Then every latent is
    the source's, bit for bit."""
    source = _source(11, 3, {"truncation": 0.7})
    recipe = {"variation": {"source": source, "strength": 0.0}, "truncation": 0.7}
    latents = render_latents(recipe, 99, [0, 1, 2], Z_DIM)
    expected = render_latents({"truncation": 0.7}, 11, [3], Z_DIM)[0]
    assert torch.equal(source_latent(source, Z_DIM), expected)
    assert all(torch.equal(row, expected) for row in latents)


def test_variations_move_away_from_the_source_as_strength_grows() -> None:
    """Given one source / When variations of strength 0.2 and 0.8 are rendered / Then the weaker ones lie
    closer to the source, and different indices give different variations."""
    source = _source(11, 3)
    near = render_latents({"variation": {"source": source, "strength": 0.2}}, 5, range(8), Z_DIM)
    far = render_latents({"variation": {"source": source, "strength": 0.8}}, 5, range(8), Z_DIM)
    origin = source_latent(source, Z_DIM)
    assert (near - origin).norm(dim=1).max() < (far - origin).norm(dim=1).min()
    assert not torch.equal(near[0], near[1])


def test_interpolation_frames_start_and_end_on_the_endpoints() -> None:
    """Given two sources / When 5 frames are rendered / Then frame 0 and 4 are the endpoints bit for bit and
    the middle frame lies between them."""
    start, end = _source(1, 0), _source(2, 4, {"truncation": 0.6})
    recipe = {"interpolation": {"start": start, "end": end, "frames": 5}}
    frames = render_latents(recipe, 123, range(5), Z_DIM)
    assert torch.equal(frames[0], source_latent(start, Z_DIM))
    assert torch.equal(frames[4], source_latent(end, Z_DIM))
    assert torch.equal(frames[2], slerp(frames[0], frames[4], 0.5))
    assert not torch.equal(frames[2], frames[0]) and not torch.equal(frames[2], frames[4])


def test_the_same_recipe_gives_the_same_latents_whatever_the_batch() -> None:
    """Given a variation recipe / When indices are rendered all at once or one by one / Then they agree."""
    recipe = {"variation": {"source": _source(3, 2), "strength": 0.4}, "truncation": 0.8}
    together = render_latents(recipe, 77, [4, 5, 6], Z_DIM, [0, 2, 0])
    alone = torch.cat([render_latents(recipe, 77, [i], Z_DIM, [r]) for i, r in ((4, 0), (5, 2), (6, 0))])
    assert torch.equal(together, alone)
