"""Bad input to `catalogan verify`: a truncated or corrupt image, and a provenance whose model version no
registry can hold, are one `Error:` line naming the file, exit 8 (NOT_VERIFIED, as for a file that is not an
image), never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from db.cli_support import ExitCode
from db.storage import LocalStore
from scheduler.cli.root import cli
from tests.cli_results import one_error_line
from workers.encoding import Provenance, encode_image


def _png(model_version: str = "tiny@1") -> bytes:
    pixels = (np.arange(32 * 32).reshape(32, 32, 1) % 256).astype(np.uint8)
    provenance = Provenance(model_version, "0" * 64, "job-1", 0, 1234, "a", None)
    return encode_image(pixels, "png", provenance)


def _verify(env: dict[str, str] | None, *args: str) -> Result:
    return CliRunner().invoke(cli, ["verify", *args], env=env, prog_name="catalogan")


@pytest.mark.parametrize("keep", [60, 100, 600])
def test_a_truncated_png_is_not_verified_in_one_line(tmp_path: Path, keep: int) -> None:
    """Given a valid catalogan PNG cut short, verify exits 8 with one line naming the file, and leaves it as is."""
    data = _png()[:keep]
    path = tmp_path / "trunc.png"
    path.write_bytes(data)
    result = _verify(None, str(path))
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    line = one_error_line(result)
    assert str(path) in line and "truncated or corrupt" in line
    assert path.read_bytes() == data


def test_a_provenance_version_beyond_nine_digits_is_not_verified(
    tmp_path: Path, sqlite_url: str, local_store: LocalStore
) -> None:
    """Given a PNG whose provenance names `tiny@<20 digits>`, `verify --regenerate` exits 8 with one line naming the
    file and the model_version field (no OverflowError from the database)."""
    path = tmp_path / "huge.png"
    path.write_bytes(_png("tiny@99999999999999999999"))
    env = {
        "CATALOGAN_DATABASE_URL": sqlite_url,
        "CATALOGAN_STORAGE_URL": local_store.url,
        "CATALOGAN_DEVICE": "cpu",
    }
    result = _verify(env, str(path), "--regenerate")
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    line = one_error_line(result)
    assert str(path) in line and "model_version" in line and "1 to 9 digits" in line
    # Reading the provenance alone still works: the file is not refused for what it claims
    assert _verify(None, str(path)).exit_code == ExitCode.OK
