"""`catalogan generate --truncation / --variation-of / --interpolate` on the embedded default."""

from __future__ import annotations

import dataclasses
import hashlib
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
from db.errors import PlanningError
from db.job_specs import parse_job_spec, request_sha256
from db.source_files import MAX_SOURCE_FILE_BYTES
from scheduler.cli.root import cli
from tests.pipeline import CATALOGAN, pipeline_env
from tests.workers.test_generate_command import _embedded_folder
from workers.encoding import Provenance, encode_image
from workers.generate_command import GenerateRequest, generate_spec

SOURCE_JOB = "4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f"


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


def _invoke(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """`catalogan generate --model tiny ARGS --out tmp/out` on a data folder under tmp; (exit code, lines)."""
    result = CliRunner().invoke(
        cli,
        ["generate", *args, "--no-worker", "--out", str(tmp_path / "out")],
        prog_name="catalogan",
        env={"CATALOGAN_DATA_DIR": str(tmp_path / "data")},
    )
    return result.exit_code, result.output.strip().splitlines()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        # Not ASCII digits: '²' reached int() ("invalid literal for int()"), '٣' was taken as index 3.
        (["--variation-of", "abc/²"], "--variation-of 'abc/²': must be JOB_ID/INDEX"),
        (["--variation-of", "abc/٣"], "--variation-of 'abc/٣': must be JOB_ID/INDEX"),
        (["--variation-of", "abc/1234567890"], "--variation-of 'abc/1234567890': must be JOB_ID/INDEX"),
        # Digits, but past any job's last index: the spec's bound, under the option as typed.
        (["--variation-of", "abc/999999999"], "--variation-of 'abc/999999999': Input should be less than"),
        (["--interpolate", "abc/1", "abc/٣", "--frames", "3"], "--interpolate 'abc/٣': must be JOB_ID/INDEX"),
        (["--interpolate", "abc/1", "abc/99999999", "--frames", "3"], "--interpolate 'abc/99999999': Input"),
    ],
    ids=[
        "superscript",
        "arabic-indic",
        "ten-digits",
        "out-of-range",
        "interpolate-arabic",
        "interpolate-range",
    ],
)
def test_a_source_that_is_no_image_index_is_named_as_typed_before_anything_happens(
    tmp_path: Path, args: list[str], named: str
) -> None:
    """Given --variation-of / --interpolate with an index that is not 1-9 ASCII digits, or past the last index
    a job can have / When `catalogan generate` runs / Then one `Error:` line names the option and the value as
    typed, exit 2, and no data folder or --out folder is made."""
    if args[0] == "--variation-of":
        args = [*args, "--strength", "0.5", "--count", "2"]
    code, lines = _invoke(tmp_path, *args)
    assert code == ExitCode.USAGE, lines
    assert len(lines) == 1 and lines[0].startswith(f"Error: {named}"), lines
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["--variation-of", f"{SOURCE_JOB}/3", "--strength", "0.5", "--count", "2"],
            f"--variation-of '{SOURCE_JOB}/3': no delivered image 3 in job {SOURCE_JOB}",
        ),
        (
            ["--interpolate", f"{SOURCE_JOB}/0", f"{SOURCE_JOB}/1", "--frames", "3"],
            f"--interpolate '{SOURCE_JOB}/0': no delivered image 0 in job {SOURCE_JOB}",
        ),
    ],
    ids=["variation", "interpolation"],
)
def test_a_missing_source_is_named_by_its_option_as_typed(
    tmp_path: Path, args: list[str], named: str
) -> None:
    """Given a source image that no job delivered / When `catalogan generate` asks for variations of it or
    frames from it / Then one `Error:` line names the option and the value as typed (not the API's field
    `variation.source`), exit 2, and no job or --out folder is made."""
    code, lines = _invoke(tmp_path, *args)
    assert code == ExitCode.USAGE, lines
    assert len(lines) == 1 and lines[0].startswith(f"Error: {named}"), lines
    assert not (tmp_path / "out").exists()


def _catalogan_png(path: Path, job_id: str = SOURCE_JOB, index: int = 3) -> Path:
    """A PNG as a job delivers it: pixels and catalogan's provenance (job id, index, ...)."""
    provenance = Provenance("tiny@1", "0" * 64, job_id, index, 5, "b", None)
    path.write_bytes(encode_image(np.zeros((28, 28, 1), np.uint8), "png", provenance))
    return path


def _request(**control: Any) -> GenerateRequest:
    base = GenerateRequest(
        model_ref=None,
        categories=(),
        sku_file=None,
        seed=3,
        output_format="png",
        chunk_size=None,
        out_dir=Path("out"),
    )
    return dataclasses.replace(base, **control)


def test_a_source_given_as_the_delivered_file_names_its_job_index_and_bytes(tmp_path: Path) -> None:
    """Given a catalogan PNG of image 3 of a job / When --variation-of and --interpolate name it by its path /
    Then the spec names that job and index with the file's sha256 (read locally, not sent), and is the same
    request as naming JOB/INDEX (the same derived job id, so the same files)."""
    png = _catalogan_png(tmp_path / "dress.png")
    digest = hashlib.sha256(png.read_bytes()).hexdigest()
    by_file = generate_spec(_request(variation_of=str(png), strength=0.5, count=2))
    by_ref = generate_spec(_request(variation_of=f"{SOURCE_JOB}/3", strength=0.5, count=2))
    assert by_file.variation is not None and by_ref.variation is not None
    assert by_file.variation.source.model_dump() == {"job_id": SOURCE_JOB, "index": 3, "sha256": digest}
    assert by_ref.variation.source.sha256 is None
    assert request_sha256(by_file) == request_sha256(by_ref)
    frames = generate_spec(_request(interpolate=(f"{SOURCE_JOB}/0", str(png)), frames=3))
    assert frames.interpolation is not None
    assert (frames.interpolation.start.sha256, frames.interpolation.end.sha256) == (None, digest)


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (b"GIF89a not a png", "not a PNG file"),
        (None, "records no catalogan:job_id and catalogan:index"),
        (b"", "no such file"),
        (b"big", f"a catalogan image is at most {MAX_SOURCE_FILE_BYTES} bytes"),
    ],
    ids=["not-png", "no-provenance", "missing", "too-large"],
)
def test_a_source_file_that_names_no_image_is_one_line_naming_the_option(
    tmp_path: Path, content: bytes | None, rule: str
) -> None:
    """Given a file that is not a PNG, a PNG without catalogan's provenance, a missing file, or a file over the
    size cap / When `catalogan generate --variation-of FILE` runs / Then one `Error:` line names the option and
    the path as typed and says why, exit 2, nothing made (the large file is refused on its size, unread)."""
    path = tmp_path / "source.png"
    if content is None:
        PILImage.new("L", (28, 28)).save(path, format="PNG")
    elif content == b"big":
        with path.open("wb") as handle:  # sparse: the size says it all, and it is never read
            handle.truncate(MAX_SOURCE_FILE_BYTES + 1)
    elif content:
        path.write_bytes(content)
    with pytest.raises(PlanningError) as caught:
        generate_spec(_request(variation_of=str(path), strength=0.5, count=2))
    assert (caught.value.field, str(caught.value).split(": ", 1)[0]) == (
        "--variation-of",
        f"--variation-of {str(path)!r}",
    )
    code, lines = _invoke(tmp_path, "--variation-of", str(path), "--strength", "0.5", "--count", "2")
    assert code == ExitCode.USAGE and len(lines) == 1, lines
    assert lines[0].startswith(f"Error: --variation-of {str(path)!r}: ") and rule in lines[0], lines
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("control", "error", "expected"),
    [
        (
            {"variation_of": f"{SOURCE_JOB}/3", "strength": 0.5, "count": 2},
            PlanningError("model", "not_retired", "model: tiny@1 is retired"),
            (
                "--variation-of",
                f"--variation-of '{SOURCE_JOB}/3': the model version that made it: tiny@1 is retired",
            ),
        ),
        (
            {"variation_of": f"{SOURCE_JOB}/3", "strength": 0.5, "count": 2, "model_ref": "tiny@2"},
            PlanningError("model", "source_model_version", "model: the source image was made by tiny@1; ..."),
            ("--model", "--model 'tiny@2': the source image was made by tiny@1; ..."),
        ),
        (
            {"interpolate": (f"{SOURCE_JOB}/0", "end.png"), "frames": 3},
            PlanningError("interpolation.end.sha256", "recorded_sha256", "interpolation.end.sha256: not it"),
            ("--interpolate", "--interpolate 'end.png': not it"),
        ),
    ],
    ids=["retired-source-model", "another-model", "edited-end-file"],
)
def test_a_refused_source_or_its_model_is_named_by_the_option_that_gave_it(
    control: dict[str, Any], error: PlanningError, expected: tuple[str, str]
) -> None:
    """Given a control job whose sources' model version was retired (no --model), whose --model is not theirs, or
    whose end file is an edited copy / When planning refuses it / Then the error names the option that gave it
    and its value as typed, not the API's field."""
    from workers.generate_command import _resolution_error_as_typed

    request = _request(**control)
    spec = parse_job_spec(
        {
            "model": control.get("model_ref"),
            "interpolation": {
                "start": {"job_id": "j", "index": 0},
                "end": {"job_id": "j", "index": 1},
                "frames": 3,
            },
        }
        if "interpolate" in control
        else {
            "model": control.get("model_ref"),
            "variation": {"source": {"job_id": "j", "index": 3}, "strength": 0.5, "count": 2},
        }
    )
    renamed = _resolution_error_as_typed(None, request, spec, error)  # type: ignore[arg-type]
    assert isinstance(renamed, PlanningError)
    assert (renamed.field, str(renamed)) == expected and renamed.rule == error.rule


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
    between two of its images, and for the variations again naming the source by its delivered file / Then the
    variations show the source's pixels, the end frames are the endpoints, the file names the same job (the same
    bytes), and an edited copy of the file is refused under --variation-of with nothing made."""
    folder = _embedded_folder(tmp_path)
    source = _run(folder, "--category", "b=3", "--seed", "4", "--truncation", "0.7", "--out", "src")
    job = str(source["job_id"])
    varied = _run(
        folder, "--variation-of", f"{job}/1", "--strength", "0", "--count", "2", "--seed", "1", "--out", "var"
    )
    _run(folder, "--interpolate", f"{job}/0", f"{job}/2", "--frames", "3", "--seed", "1", "--out", "frames")
    # The source named by its delivered file: the same request, so the same job and the same bytes.
    source_file = "src/b/00000001.png"
    by_file = _run(
        folder,
        "--variation-of",
        source_file,
        "--strength",
        "0",
        "--count",
        "2",
        "--seed",
        "1",
        "--out",
        "var-file",
    )
    for index in range(2):
        name = f"b/{index:08d}.png"
        assert (folder / "var-file" / name).read_bytes() == (folder / "var" / name).read_bytes()
    # An edited copy of the file (one byte more) is not that image: refused under the option, nothing made.
    edited = folder / "edited.png"
    edited.write_bytes((folder / source_file).read_bytes() + b"\0")
    command = [*CATALOGAN, "generate", "--model", "tiny", "--variation-of", "edited.png", "--strength", "0"]
    refused = subprocess.run(
        [*command, "--count", "2", "--out", "never"],
        cwd=folder,
        env=pipeline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == ExitCode.USAGE, refused.stderr
    assert refused.stderr.startswith("Error: --variation-of 'edited.png': the file is not image 1 of job")
    assert not (folder / "never").exists() and by_file["job_id"] == varied["job_id"]

    source_pixels = [_pixels(folder / "src" / "b" / f"{index:08d}.png") for index in range(3)]
    for index in range(2):
        assert np.array_equal(_pixels(folder / "var" / "b" / f"{index:08d}.png"), source_pixels[1])
    assert np.array_equal(_pixels(folder / "frames" / "b" / "00000000.png"), source_pixels[0])
    assert np.array_equal(_pixels(folder / "frames" / "b" / "00000002.png"), source_pixels[2])
