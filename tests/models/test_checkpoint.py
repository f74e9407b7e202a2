"""The checkpoint format: round trip, version check, RNG states, generator-only export."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch

from db.storage import MemoryStore
from models.checkpoint import (
    capture_rng_states,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    generator_only,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from models.errors import CheckpointError


def test_rng_states_restore_every_generator() -> None:
    # Given captured RNG states
    states = capture_rng_states()
    first = (torch.rand(3), np.random.rand(3), random.random())
    # When they are restored (after a trip through checkpoint bytes)
    restored = checkpoint_from_bytes(
        checkpoint_to_bytes({"kind": "generator", "generator_ema": {}, "model_config": {}, "rng": states})
    )
    restore_rng_states(restored["rng"])
    # Then torch, numpy and python draw the same numbers again
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_checkpoints_travel_through_the_object_store() -> None:
    store = MemoryStore()
    payload = {
        "kind": "generator",
        "generator_ema": {"w": torch.ones(2)},
        "model_config": {"z_dim": 4},
        "step": 7,
    }
    uri = save_checkpoint(store, "models/x/run/checkpoint.pt", payload)
    assert uri.endswith("models/x/run/checkpoint.pt")
    loaded = load_checkpoint(store, "models/x/run/checkpoint.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["generator_ema"]["w"], torch.ones(2))


def test_other_format_versions_and_incomplete_full_checkpoints_are_refused() -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"format_version": 999, "kind": "generator"}, buffer)
    with pytest.raises(CheckpointError, match="format version 999"):
        checkpoint_from_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint_from_bytes(checkpoint_to_bytes({"kind": "full", "generator_ema": {}, "model_config": {}}))


def test_generator_only_drops_the_discriminator_and_optimisers() -> None:
    full = {
        "kind": "full",
        "preset": "tiny",
        "model_config": {},
        "train_config": {},
        "step": 3,
        "generator": {},
        "generator_ema": {"w": torch.zeros(1)},
        "discriminator": {"d": torch.zeros(5)},
        "optimizer_g": {},
        "optimizer_d": {},
        "rng": {},
        "data_fingerprint": "sha256:x",
    }
    slim = generator_only(full)
    assert slim["kind"] == "generator"
    assert "discriminator" not in slim and "optimizer_d" not in slim
    assert slim["step"] == 3 and slim["data_fingerprint"] == "sha256:x"


def test_a_checkpoint_read_back_serialises_to_the_same_bytes() -> None:
    # Given a full checkpoint of real networks and optimiser states, written once
    from models.build import build_discriminator, build_generator
    from models.config import get_preset
    from models.steps import make_optimizers

    preset = get_preset("tiny")
    generator, discriminator = build_generator(preset.model), build_discriminator(preset.model)
    optimizer_g, _ = make_optimizers(generator, discriminator, preset.train)
    generator(torch.randn(2, preset.model.z_dim), torch.tensor([0, 1])).mean().backward()
    optimizer_g.step()  # Adam state with its "step", "exp_avg", … keys

    def payload(networks: dict[str, Any]) -> dict[str, Any]:
        # Built the way training builds it: literal keys here (e.g. "step"), networks' state dicts inside
        return {"kind": "generator", "model_config": preset.model.to_dict(), "step": 1, **networks}

    written = checkpoint_to_bytes(
        payload({"generator_ema": generator.state_dict(), "optimizer_g": optimizer_g.state_dict()})
    )
    # When the state dicts are read back (fresh string objects for every key) and written again
    loaded = checkpoint_from_bytes(written)
    again = checkpoint_to_bytes(
        payload({"generator_ema": loaded["generator_ema"], "optimizer_g": loaded["optimizer_g"]})
    )
    # Then the bytes are the same: a resumed run can end with the bytes of an uninterrupted one
    assert again == written
    # And the state dict's metadata survived the trip
    assert hasattr(checkpoint_from_bytes(again)["generator_ema"], "_metadata")
