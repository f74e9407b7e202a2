"""Section 3 of the prepared device benchmark (`bench/gpu_worker_section.py`), run on the CPU at a tiny size.

What a device session needs from it before it spends device time: it runs with only what the device image
has (no boto3, Celery, Ray, Redis, Alembic or pyarrow), every job generates every image it asked for, the gate
reports its scores and redraws, the Ray Data peer's actor runs beside it, and the result file holds the
figures. No speed is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = (
    "boto3",
    "botocore",
    "s3transfer",
    "celery",
    "kombu",
    "ray",
    "redis",
    "alembic",
    "pyarrow",
    "obstore",
)

# A fresh interpreter in which the modules above cannot be imported (the device image lacks them), running
# `bench/gpu_bench.py` as its `main` would.
PROBE = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not on the device image)")
        return None
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, sys.argv[2] + "/bench")
import gpu_bench
gpu_bench.main(sys.argv[3:])
"""


def _check_runs(section: dict[str, Any]) -> None:
    # A job is `succeeded` once finalized; without finalize (no pyarrow) it stays `running`, every chunk done
    final_status = "succeeded" if section["finalize"] else "running"
    runs = section["runs"]
    cells = {(run["format"], run["gate"], run["chunk_size"]) for run in runs}
    # On the CPU the worker's default gate is serial; the section adds the gate overlapped at the largest chunk
    assert section["gate_overlap"] is False
    assert cells == {(f, g, c) for c in (8, 16) for f in ("png", "tar") for g in ("off", "on")} | {
        (f, g, 16) for f in ("png", "tar") for g in ("redraw", "on-overlap")
    }
    for run in runs:
        asked = run["images_asked"]
        assert asked == 32 and run["job_status"] == final_status
        assert run["chunks_finished"] == run["chunks"]
        assert run["images_generated"] == asked == run["images_done"] + run["images_rejected"]
        assert run["images_failed"] == 0
        assert run["chunks"] == math.ceil(asked / run["chunk_size"])
        assert run["seconds"] > 0 and run["images_per_s"] > 0 and run["cpu_ms_per_image"] > 0
        stages = run["stages"]
        assert {"forward", "sql"} <= set(stages)
        assert stages["forward"]["calls"] >= run["chunks"]  # one batch (64) covers a chunk of 8 or 16
        # claim + rows/completion per chunk, at least
        assert stages["sql"]["calls"] >= 2 * run["chunks"]
        if run["images_done"]:
            assert stages["encode"]["calls"] == run["images_done"] and stages["put"]["calls"] >= 1
        stats = run["gate_stats"]
        assert stages["gate"]["calls"] == run["chunks"]  # one call per batch (gate off: a pass-through)
        if run["gate"] == "off":
            assert stats is None and run["images_rejected"] == 0
            continue
        assert stats["scored"] == asked and 0.0 <= stats["score_min"] <= stats["score_mean"] <= 1.0
        assert stats["rejected"] == run["images_rejected"]
        if run["gate"] in ("on", "on-overlap"):  # as shipped: min_confidence 0, no near copies in the index
            assert stats["redrawn_images"] == stats["redraws_total"] == stats["rejected"] == 0
        else:  # min_confidence 0.5: the random tiny model's images fail, are redrawn, up to 3 times
            assert 0 < stats["redrawn_images"] <= asked
            assert stats["redrawn_images"] <= stats["redraws_total"] <= 3 * stats["redrawn_images"]
    ratios = section["gate_on_vs_off"]
    assert set(ratios) == {f"{f}|chunk {c}|on / off" for f in ("png", "tar") for c in (8, 16)} | {
        f"{f}|chunk 16|{g} / off" for f in ("png", "tar") for g in ("redraw", "on-overlap")
    }
    assert all(value > 0 for value in ratios.values())
    # And the peer's actor ran Ray-free at its batch (8 at the smoke size) and the worker's (64 on the CPU),
    # PUTting every image (checked against the sink inside the section), and catalogan is compared with it
    peers = section["peer"]
    assert [(peer["batch_size"], peer["images"]) for peer in peers] == [(8, 32), (64, 32)]
    assert all(peer["seconds"] > 0 and peer["images_per_s"] > 0 for peer in peers)
    best = max(peer["images_per_s"] for peer in peers)
    rates = {(run["chunk_size"], run["gate"]): run["images_per_s"] for run in runs if run["format"] == "png"}
    assert section["versus_peer"] == {
        f"png|chunk {c}|{g} / peer": round(rates[(c, g)] / best, 3) for c in (8, 16) for g in ("off", "on")
    }


def test_section_3_runs_on_the_cpu_with_only_what_the_device_image_has(tmp_path: Path) -> None:
    # Given an interpreter that cannot import boto3, Celery, Ray, Redis, Alembic or pyarrow
    out = tmp_path / "out"
    args = ["--device", "cpu", "--smoke", "--sections", "0,3", "--out", str(out)]
    # When gpu_bench.py runs sections 0 and 3 on the CPU at its smoke size
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(BLOCKED), str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "gpu_bench.json").read_text())
    # Then the preflight saw the blocked modules missing (the probe did block them)
    assert summary["0"]["imports"]["boto3"].startswith("ModuleNotFoundError")
    assert summary["0"]["imports"]["workers.chunk_generation"] == "ok"
    # And section 3 ran without them: schema from the tables, no Parquet manifests
    section = summary["3"]
    assert "error" not in section, section.get("error")
    assert section["schema"] == "create_all (no alembic)" and section["finalize"] is False
    assert section["device"] == "cpu" and section["model"] == "tiny" and section["database"]
    # And every job generated the images it asked for, with the figures and gate stats
    _check_runs(section)
    # And the section's own file holds the same figures (it is rewritten after every job)
    assert json.loads((out / "gpu_worker_section.json").read_text())["runs"] == section["runs"]
    # And without finalize, what reached the sink is the images (png) or one shard per chunk (tar)
    for run in section["runs"]:
        if run["format"] == "png":
            assert run["objects_put"] == run["images_done"]
        else:
            assert run["objects_put"] == (run["chunks"] if run["images_done"] else 0)


def test_section_3_in_process_with_the_full_stack_finalizes_and_restores_the_worker(tmp_path: Path) -> None:
    # Given this environment (Alembic and pyarrow installed)
    sys.path.insert(0, str(ROOT))
    try:
        import workers.chunk_generation as worker
        from bench.gpu_worker_section import run as run_section

        before = (worker._forward, worker._gated, worker.encode_with_digest, worker.transaction)
        args = argparse.Namespace(smoke=True, budget_s=120.0, out=tmp_path)
        # When section 3 runs in this process
        section = run_section(args, torch.device("cpu"))
    finally:
        sys.path.remove(str(ROOT))
    # Then the schema came from the migrations and each job was finalized (manifests in the sink)
    assert section["schema"] == "alembic" and section["finalize"] is True
    _check_runs(section)
    for run in section["runs"]:
        assert run["stages"]["finalize"]["calls"] == 1
        assert run["objects_put"] > (run["images_done"] if run["format"] == "png" else 0)
    # And the worker function's stages are the originals again
    assert (worker._forward, worker._gated, worker.encode_with_digest, worker.transaction) == before


def test_section_5_runs_the_worker_as_several_processes_on_one_device(tmp_path: Path) -> None:
    # When gpu_bench.py runs section 5 on the CPU at its smoke size (1 and 2 processes, 32 images each)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "bench/gpu_bench.py",
            "--device",
            "cpu",
            "--smoke",
            "--sections",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    section = json.loads((out / "gpu_bench.json").read_text())["5"]
    assert "error" not in section, section.get("error")
    # Then each count ran that many processes, each generating its 32 images, the cores split between them
    cores = section["cores"]
    assert [(run["processes"], run["images"], run["torch_threads"]) for run in section["runs"]] == [
        (1, 32, max(1, cores)),
        (2, 64, max(1, cores // 2)),
    ]
    for run in section["runs"]:
        assert len(run["per_process_images_per_s"]) == run["processes"]
        # (the span is rounded to 0.1 ms in the file, the rate from the unrounded span)
        assert run["span_s"] > 0
        assert run["images_per_s"] == pytest.approx(run["images"] / run["span_s"], rel=0.01)
    # And the scaling is against one process, and the section's own file holds the same figures
    rates = [run["images_per_s"] for run in section["runs"]]
    assert section["scaling"] == {"1": 1.0, "2": round(rates[1] / rates[0], 3)}
    assert json.loads((out / "gpu_worker_processes.json").read_text()) == section
