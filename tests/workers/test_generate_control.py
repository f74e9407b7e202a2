"""`catalogan generate --truncation / --variation-of / --interpolate` on the embedded default."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from scheduler.cli.root import cli
from tests.pipeline import CATALOGAN, pipeline_env
from tests.workers.test_generate_command import _embedded_folder


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--category", "a=1", "--truncation", "0.1"], "truncation"),
        (["--variation-of", "not-an-image", "--strength", "0.5", "--count", "2"], "--variation-of"),
        (["--variation-of", "abc/1", "--count", "2"], "--strength"),
        (["--interpolate", "abc/1", "abc/2"], "--frames"),
        (["--category", "a=1", "--interpolate", "abc/1", "abc/2", "--frames", "3"], "--category"),
    ],
)
def test_bad_control_options_are_one_line_errors(tmp_path: Path, args: list[str], named: str) -> None:
    """Given a bad control option / When `catalogan generate` runs / Then it exits non-zero with one line
    naming the option, before anything is created."""
    result = CliRunner().invoke(
        cli, ["generate", "--model", "tiny", *args, "--out", str(tmp_path / "out")], prog_name="catalogan"
    )
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and named in lines[0], result.output
    assert not (tmp_path / "out").exists()


def _run(cwd: Path, *args: str) -> dict[str, object]:
    command = [*CATALOGAN, "generate", "--model", "tiny", *args, "--json"]
    result = subprocess.run(command, cwd=cwd, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(path.read_bytes())))


@pytest.mark.slow
def test_generate_variations_and_frames_that_verify(tmp_path: Path) -> None:
    """Given a ψ 0.7 job made by `catalogan generate` / When it asks for strength-0 variations and 3 frames
    between two of its images / Then the variations show the source's pixels, the end frames are the
    endpoints, and `catalogan verify --regenerate` proves a variation and a frame bit for bit."""
    folder = _embedded_folder(tmp_path)
    source = _run(folder, "--category", "b=3", "--seed", "4", "--truncation", "0.7", "--out", "src")
    job = str(source["job_id"])
    _run(
        folder, "--variation-of", f"{job}/1", "--strength", "0", "--count", "2", "--seed", "1", "--out", "var"
    )
    _run(folder, "--interpolate", f"{job}/0", f"{job}/2", "--frames", "3", "--seed", "1", "--out", "frames")

    source_pixels = [_pixels(folder / "src" / "b" / f"{index:08d}.png") for index in range(3)]
    for index in range(2):
        assert np.array_equal(_pixels(folder / "var" / "b" / f"{index:08d}.png"), source_pixels[1])
    assert np.array_equal(_pixels(folder / "frames" / "b" / "00000000.png"), source_pixels[0])
    assert np.array_equal(_pixels(folder / "frames" / "b" / "00000002.png"), source_pixels[2])
