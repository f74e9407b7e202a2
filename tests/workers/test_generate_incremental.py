"""`catalogan generate --sku-file` run again with new SKUs generates only those; `catalogan verify` on its files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from db.cli_support import ExitCode
from tests.pipeline import CATALOGAN, pipeline_env
from tests.workers.test_generate_command import _embedded_folder

pytestmark = pytest.mark.slow


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CATALOGAN, *args], cwd=cwd, env=pipeline_env(), capture_output=True, text=True, timeout=300
    )


def _generate(cwd: Path, skus: range, out: str) -> dict[str, object]:
    sku_file = cwd / f"skus-{len(skus)}.csv"
    sku_file.write_text("# sku,category,count\n" + "".join(f"SKU-{n},{'abc'[n % 3]},2\n" for n in skus))
    args = ["generate", "--model", "tiny", "--sku-file", str(sku_file), "--seed", "5", "--chunk-size", "4"]
    result = _run(cwd, *args, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_generate_again_with_new_skus_generates_only_those_and_its_files_verify(tmp_path: Path) -> None:
    # Given an embedded installation where 6 SKUs (2 images each) were generated with --seed 5
    folder = _embedded_folder(tmp_path)
    first = _generate(folder, range(6), "out1")
    assert (first["status"], first["images_done"], first["items_skipped_existing"]) == ("succeeded", 12, 0)
    # When the SKU file gains 2 SKUs and the command runs again with the same seed
    second = _generate(folder, range(8), "out2")
    # Then only the 2 new SKUs are generated and exported; the 6 others are reported as skipped
    assert (second["images_total"], second["images_done"]) == (4, 4)
    assert (second["items_skipped_existing"], second["images_skipped_existing"]) == (6, 12)
    exported = sorted(path.parent.name for path in (folder / "out2").glob("SKU-*/*.png"))
    assert exported == ["SKU-6", "SKU-6", "SKU-7", "SKU-7"]
    manifest = [json.loads(line) for line in (folder / "out2" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(row["sku"] for row in manifest if row["status"] == "skipped_existing") == sorted(
        f"SKU-{n}" for n in range(6) for _ in range(2)
    )
    # And an exported file verifies bit for bit against the registry; a copy with one byte less does not
    image = next((folder / "out2" / "SKU-7").glob("*.png"))
    verified = _run(folder, "verify", str(image), "--regenerate", "--json")
    assert verified.returncode == ExitCode.OK, verified.stderr
    assert json.loads(verified.stdout)["matches"] is True
    truncated = folder / "truncated.png"
    truncated.write_bytes(image.read_bytes()[:-1])
    refused = _run(folder, "verify", str(truncated), "--regenerate")
    # (cut inside its IEND chunk: refused from the chunk walk as damaged, before anything is regenerated)
    assert refused.returncode == ExitCode.NOT_VERIFIED and "truncated or corrupt" in refused.stderr
