"""What `models register` and `evaluate --record` keep of an evaluation on the registry row: one rule
(`training_run.recorded_metrics`), per-category metrics included, nothing unmeasured written over a value.

The evaluator itself is replaced by a canned report: these tests are about what reaches the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from db.engine import make_engine, make_session_factory
from models.evaluation import EvaluationReport
from models.inference import random_generator_checkpoint
from models.registry import get_version, register_version
from scheduler.cli.root import cli

CATEGORIES = ("a", "b", "c")  # the tiny preset's: a category gate requires every category of the version


def _report(cas: float | None) -> EvaluationReport:
    """A report as `evaluate_generator` returns it, every category measured."""
    return EvaluationReport(
        source="register",
        samples_per_class=10,
        sample_count=30,
        fid_fm=1.5,
        kid=0.01,
        kid_std=0.001,
        precision=0.9,
        recall=0.8,
        conditional_accuracy=0.95,
        cas=cas,
        intra_class_ssim=0.1,
        closest_pairs_png="/home/someone/pairs.png",
        per_class_accuracy={category: 0.9 for category in CATEGORIES},
        real_per_class_accuracy={category: 0.92 for category in CATEGORIES},
    )


def test_register_records_the_per_category_metrics_a_category_gate_reads(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a per-category promotion gate (CATALOGAN_GATE_MIN_CATEGORY_ACCURACY=0.5) and a checkpoint every
    category of which measures 0.9, when `models register CKPT --name N --samples 10 --promote` runs, then the
    row holds per_class_accuracy and real_per_class_accuracy and the version is promoted: before, only the
    scalars were kept, and the gate refused it as "not measured" (exit 4)."""
    import models.evaluation

    monkeypatch.setenv("CATALOGAN_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CATALOGAN_STORAGE_URL", (tmp_path / "objects").as_uri())
    monkeypatch.setenv("CATALOGAN_GATE_MIN_CATEGORY_ACCURACY", "0.5")
    monkeypatch.setattr(models.evaluation, "real_test_reference", lambda *_args, **_kwargs: None)
    monkeypatch.setattr(models.evaluation, "evaluate_generator", lambda *_args, **_kwargs: _report(cas=0.9))
    checkpoint = tmp_path / "elsewhere.pt"
    checkpoint.write_bytes(random_generator_checkpoint("tiny", seed=1))

    result = CliRunner().invoke(
        cli, ["models", "register", str(checkpoint), "--name", "outside", "--samples", "10", "--promote"]
    )

    assert result.exit_code == 0, result.output
    row = get_version(make_session_factory(make_engine(sqlite_url)), "outside@1")
    metrics: dict[str, Any] = dict(row.metrics or {})
    assert metrics["per_class_accuracy"] == {category: 0.9 for category in CATEGORIES}
    assert metrics["real_per_class_accuracy"] == {category: 0.92 for category in CATEGORIES}
    assert row.status.value == "production"
    assert "closest_pairs_png" not in metrics  # a path on the measuring host, not a metric


def test_evaluate_record_without_cas_keeps_the_recorded_cas(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a version whose row records CAS 0.8, when `evaluate NAME@V --no-cas --record` records a new
    evaluation (its CAS None: not measured), then the new numbers replace the old and CAS stays 0.8: before,
    None was merged over it, and the CAS gate then refused a version that had passed it."""
    from models.cli_evaluate import record_report

    monkeypatch.setenv("CATALOGAN_DATABASE_URL", sqlite_url)
    factory = make_session_factory(make_engine(sqlite_url))
    register_version(
        factory,
        name="m",
        preset="tiny",
        checkpoint_uri="file:///x/generator.pt",
        checkpoint_sha256="0" * 64,
        model_config={"architecture": "cgan", "categories": list(CATEGORIES)},
        data_fingerprint="sha256:d",
        metrics={"cas": 0.8, "conditional_accuracy": 0.7},
    )

    record_report("m@1", _report(cas=None))

    metrics: dict[str, Any] = dict(get_version(factory, "m@1").metrics or {})
    assert metrics["cas"] == 0.8
    assert metrics["conditional_accuracy"] == 0.95 and metrics["per_class_accuracy"]["b"] == 0.9
