"""The prepared GPU training script (`bench/train_variants_gpu.py`), run on the CPU for two steps at batch 4.

What a device session needs from it before it spends device time: the trained G, G_ema and D come back as a
trainable checkpoint cut into parts small enough for the device machine to return, `--join` puts them
together only when the sha256 recorded in `variants.json` matches, and `--init` goes on from the joined file.
No speed or quality is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import TRAINABLE, checkpoint_from_bytes

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "train_variants_gpu.py"

pytestmark = pytest.mark.slow


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(SCRIPT),
        "--data",
        "fashion-mnist",
        "--variant",
        "b4:batch_size=4",
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        "--train-s",
        "300",
        "--eval-s",
        "0",
        "--part-mib",
        "8",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_the_trainable_checkpoint_comes_back_in_parts_joins_checked_and_continues(tmp_path: Path) -> None:
    # Given two steps of fashion-cgan at batch 4
    first = _train(tmp_path / "first")
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((tmp_path / "first" / "variants.json").read_text())
    entry = summary["variants"]["b4"]["trainable"]
    # Then the trainable checkpoint came back as parts of at most --part-mib MiB each
    parts = [tmp_path / "first" / name for name in entry["parts"]]
    assert len(parts) >= 2 and all(0 < part.stat().st_size <= 8 * 2**20 for part in parts)
    assert entry["file"] == "b4-trainable.pt" and entry["step"] == 2
    written_generator = (tmp_path / "first" / "b4-generator.pt").read_bytes()
    (tmp_path / "first" / "b4-generator.pt").unlink()
    # When --join puts it together
    joined = tmp_path / "first" / "b4-trainable.pt"
    join = subprocess.run(
        [sys.executable, str(SCRIPT), "--join", str(joined)], capture_output=True, text=True, timeout=120
    )
    assert join.returncode == 0, join.stderr
    # Then --join also wrote the generator, the same bytes as the one the training call wrote itself
    joined_generator = tmp_path / "first" / "b4-generator.pt"
    assert joined_generator.read_bytes() == written_generator
    # Then it is the trainable checkpoint of step 2: G, G_ema and D, no optimiser state
    payload = checkpoint_from_bytes(joined.read_bytes())
    assert payload["kind"] == TRAINABLE and payload["step"] == 2
    assert {"generator", "generator_ema", "discriminator"} <= set(payload) and "optimizer_d" not in payload
    # And a run with --init goes on from it (every variant pins and checks it, as catalogan train does)
    second = _train(tmp_path / "second", "--init", str(joined), "--no-generator-files")
    assert second.returncode == 0, second.stderr[-2000:]
    # (--no-generator-files, as the device session passes it, brings back the parts and no generator)
    assert sorted(p.name for p in (tmp_path / "second").glob("b4-*")) == [
        f"b4-trainable.pt.part-{n}" for n in range(len(parts))
    ]
    assert f"starting from {joined}" in second.stdout and "G, G_ema and D go on" in second.stdout
    assert (
        json.loads((tmp_path / "second" / "variants.json").read_text())["variants"]["b4"]["returncode"] == 0
    )
    # And a part that changed on the way is refused, naming the file and both digests
    parts[0].write_bytes(b"x" + parts[0].read_bytes()[1:])
    broken = subprocess.run(
        [sys.executable, str(SCRIPT), "--join", str(joined)], capture_output=True, text=True, timeout=120
    )
    assert broken.returncode != 0
    assert "b4-trainable.pt has sha256" in broken.stderr and entry["sha256"] in broken.stderr
