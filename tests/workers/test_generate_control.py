"""`catalogan generate --truncation / --variation-of / --interpolate` on the embedded default."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from db.cli_support import ExitCode
from scheduler.cli.root import cli
from tests.pipeline import CATALOGAN, pipeline_env
from tests.workers.test_generate_command import _embedded_folder
from workers.generate_command import GenerateRequest, generate_spec


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


@pytest.mark.parametrize(
    ("args", "named"),
    [
        # An option that only means something with another one was silently ignored: a job of items ran.
        (["--category", "a=1", "--count", "2"], ["--count", "--variation-of"]),
        (["--category", "a=1", "--strength", "0.5"], ["--strength", "--variation-of"]),
        (["--category", "a=1", "--frames", "3"], ["--frames", "--interpolate"]),
        (["--interpolate", "j/1", "j/2", "--frames", "3", "--count", "2"], ["--count", "--variation-of"]),
        (["--variation-of", "j/1", "--strength", "0", "--count", "2", "--frames", "3"], ["--frames"]),
        # Combinations docs/controlling.md rules out, named as typed (not as the API's fields).
        (
            ["--variation-of", "j/1", "--strength", "0", "--count", "2", "--interpolate", "j/1", "j/2"],
            ["--variation-of", "--interpolate"],
        ),
        (
            ["--sku-file", "{skus}", "--variation-of", "j/1", "--strength", "0", "--count", "2"],
            ["--sku-file", "--variation-of"],
        ),
        (
            ["--truncation", "0.8", "--interpolate", "j/1", "j/2", "--frames", "3"],
            ["--truncation", "--interpolate"],
        ),
        (["--variation-of", "j/1", "--strength", "0.5"], ["--count", "--variation-of"]),
    ],
    ids=[
        "count-without-variation",
        "strength-without-variation",
        "frames-without-interpolate",
        "count-with-interpolate",
        "frames-with-variation",
        "variation-and-interpolate",
        "sku-file-with-variation",
        "truncation-with-interpolate",
        "variation-without-count",
    ],
)
def test_options_that_do_not_combine_are_refused_before_anything_happens(
    tmp_path: Path, args: list[str], named: list[str]
) -> None:
    """Given options that do not combine (or one that needs another that is absent) / When `catalogan generate`
    runs / Then one `Error:` line names the options, the exit code is 2, and no data folder, job or --out
    folder was made."""
    skus = tmp_path / "skus.csv"
    skus.write_text("S1,a\n")
    args = [str(skus) if arg == "{skus}" else arg for arg in args]
    result = CliRunner().invoke(
        cli,
        ["generate", "--model", "tiny", *args, "--out", str(tmp_path / "out")],
        prog_name="catalogan",
        env={"CATALOGAN_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(option in lines[0] for option in named), lines[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "control",
    [
        {"variation_of": "j/1", "strength": 0.5, "count": 2, "truncation": 0.8, "seed": 3},
        {"interpolate": ("j/1", "j/2"), "frames": 3, "seed": 3, "chunk_size": 2},
    ],
    ids=["variation-with-truncation", "interpolation-with-chunk-size"],
)
def test_options_that_combine_pass_the_combination_check(control: dict[str, Any]) -> None:
    """Given a variation with ψ and a seed, or frames with a seed and a chunk size (docs/controlling.md) /
    When the request becomes a spec / Then the combination is accepted as that kind of job."""
    request = GenerateRequest(
        model_ref=None,
        categories=(),
        sku_file=None,
        seed=None,
        output_format="png",
        chunk_size=None,
        out_dir=Path("out"),
    )
    spec = generate_spec(dataclasses.replace(request, **control))
    assert (spec.variation is not None) == ("variation_of" in control)
    assert (spec.interpolation is not None) == ("interpolate" in control)


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
