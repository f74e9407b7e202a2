"""The truncation benchmark (`bench/bench_truncation.py`): the ψ wrapper applies ψ exactly as a job does, and
`--from-json --plot` redraws the curve of docs/evaluation.md from rows a `--json` run printed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

from models.latent_control import truncate

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_truncation.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_truncation", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recording:
    """A generator stand-in that returns the latents it was given (the wrapper's only job is ψ·z)."""

    z_dim = 4

    def generate(self, class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return latents


def test_the_wrapper_scales_latents_as_a_job_does(bench: ModuleType) -> None:
    latents = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    wrapped = bench.Truncated(Recording(), 0.5)
    assert wrapped.z_dim == 4
    assert torch.equal(wrapped.generate(torch.zeros(3, dtype=torch.long), latents), truncate(latents, 0.5))
    assert torch.equal(truncate(latents, 0.5), latents * 0.5)


def test_from_json_draws_the_curve_without_measuring(tmp_path: Path) -> None:
    rows = [
        {"psi": psi, "fid_fm": fid, "precision": 0.9, "recall": recall, "conditional_accuracy": 0.93,
         "intra_class_ssim": 0.3, "samples": 5000}
        for psi, fid, recall in ((1.0, 0.4, 0.7), (0.7, 1.5, 0.4), (0.3, 9.0, 0.02))
    ]  # fmt: skip
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "curve.png"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--from-json", str(source), "--plot", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (900, 340)
    refused = subprocess.run(
        [sys.executable, str(BENCH), "--from-json", str(source)], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "--from-json needs --plot" in refused.stderr
