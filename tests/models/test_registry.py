"""The model registry on SQLite and PostgreSQL: versions, references, transitions, promotion gates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.errors import InvalidTransitionError, NotFoundError
from db.status import ModelVersionStatus
from models.errors import PromotionRefusedError
from models.registry import (
    PromotionGates,
    get_version,
    list_versions,
    promote_version,
    record_metrics,
    register_version,
    retire_version,
)

GOOD = {"conditional_accuracy": 0.97, "cas": 0.85, "fid_fm": 3.0}


def _register(factory: sessionmaker[Session], metrics: dict[str, Any] | None = None) -> str:
    row = register_version(
        factory,
        name="fashion-cgan",
        preset="fashion-cgan",
        checkpoint_uri="file:///tmp/x/generator.pt",
        checkpoint_sha256="ab" * 32,
        model_config={"architecture": "cgan", "categories": ["a", "b"]},
        data_fingerprint="sha256:data",
        metrics=metrics,
    )
    return f"{row.name}@{row.version}"


def test_versions_are_numbered_and_start_as_candidates(session_factory: sessionmaker[Session]) -> None:
    first, second = _register(session_factory), _register(session_factory)
    assert (first, second) == ("fashion-cgan@1", "fashion-cgan@2")
    rows = list_versions(session_factory, "fashion-cgan")
    assert [row.status for row in rows] == [ModelVersionStatus.CANDIDATE] * 2
    assert rows[0].categories == ["a", "b"] and rows[0].architecture == "cgan"


def test_a_name_resolves_to_its_production_version_only(session_factory: sessionmaker[Session]) -> None:
    ref = _register(session_factory, GOOD)
    with pytest.raises(NotFoundError, match="no production version"):
        get_version(session_factory, "fashion-cgan")
    assert get_version(session_factory, ref).version == 1
    promote_version(session_factory, ref)
    assert get_version(session_factory, "fashion-cgan").version == 1
    with pytest.raises(NotFoundError, match="fashion-cgan@9"):
        get_version(session_factory, "fashion-cgan@9")


def test_promotion_below_the_gates_is_refused_unless_forced(session_factory: sessionmaker[Session]) -> None:
    # Given a candidate without metrics and one with a low conditional accuracy
    bare = _register(session_factory)
    weak = _register(session_factory, {**GOOD, "conditional_accuracy": 0.5})
    # Then promoting either is refused, naming the failing gate
    with pytest.raises(PromotionRefusedError, match="conditional_accuracy not measured"):
        promote_version(session_factory, bare)
    with pytest.raises(PromotionRefusedError, match=r"conditional_accuracy = 0\.5 < gate 0\.9"):
        promote_version(session_factory, weak)
    # And a stricter FID gate from settings refuses even good accuracy
    with pytest.raises(PromotionRefusedError, match="fid_fm"):
        promote_version(
            session_factory, weak, gates=PromotionGates(min_conditional_accuracy=None, max_fid_fm=1.0)
        )
    # Unless forced
    assert promote_version(session_factory, weak, force=True).status is ModelVersionStatus.PRODUCTION


def test_gates_are_read_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOGAN_GATE_MIN_CAS", "0.9")
    assert PromotionGates().failures({"conditional_accuracy": 0.95, "cas": 0.8}) == ["cas = 0.8 < gate 0.9"]


def test_per_category_floors_refuse_a_version_with_one_weak_category(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a version whose overall accuracy passes but whose shirts are half as recognisable as real shirts
    per_class = {"shirt": 0.33, "trouser": 0.99, "bag": 0.98}
    real = {"shirt": 0.66, "trouser": 0.98, "bag": 0.97}
    ref = _register(
        session_factory,
        {**GOOD, "per_class_accuracy": per_class, "real_per_class_accuracy": real},
    )
    # When the operator requires every category at 0.9 of the evaluator's real accuracy
    monkeypatch.setenv("CATALOGAN_GATE_MIN_CATEGORY_ACCURACY_RATIO", "0.9")
    # Then promotion is refused naming the category, its accuracy and its floor
    with pytest.raises(PromotionRefusedError, match=r"shirt 0\.330 < 0\.594"):
        promote_version(session_factory, ref)
    # And an absolute floor reports the same category, while the gate table shows the weakest one
    gates = PromotionGates(min_category_accuracy=0.5, min_category_accuracy_ratio=None)
    checks = {check.gate: check for check in gates.checks({**GOOD, "per_class_accuracy": per_class})}
    assert not checks["min_category_accuracy"].passed
    assert checks["min_category_accuracy"].value == "lowest: shirt 0.330"
    assert checks["min_conditional_accuracy"].passed
    # And a version without per-category metrics does not pass a per-category gate
    assert "per_class_accuracy not measured" in gates.failures(GOOD)[0]
    # And with better shirts the same gates pass
    better = {**per_class, "shirt": 0.61}
    assert gates.failures({**GOOD, "per_class_accuracy": better}) == []
    assert (
        PromotionGates(min_category_accuracy_ratio=0.9).failures(
            {**GOOD, "per_class_accuracy": better, "real_per_class_accuracy": real}
        )
        == []
    )


ONLY_CATEGORY_GATES = {"min_conditional_accuracy": None, "min_cas": None, "max_fid_fm": None}


@pytest.mark.parametrize(
    ("gates", "metrics", "why"),
    [
        pytest.param(
            {"min_category_accuracy_ratio": 0.9},
            {
                "per_class_accuracy": {"shirt": 0.1, "bag": 0.99},
                "real_per_class_accuracy": {"bag": 0.98},
            },
            "shirt (real accuracy missing)",
            id="real-accuracy-missing-for-one-category",
        ),
        pytest.param(
            {"min_category_accuracy_ratio": 0.9},
            {"per_class_accuracy": {"shirt": 0.1, "bag": 0.99}, "real_per_class_accuracy": {}},
            "shirt (real accuracy missing), bag (real accuracy missing)",
            id="real-accuracy-empty",
        ),
        pytest.param(
            {"min_category_accuracy_ratio": 0.9},
            {
                "per_class_accuracy": {"shirt": 0.1, "bag": 0.99},
                "real_per_class_accuracy": {"shirt": 0.0, "bag": 0.98},
            },
            "shirt (real accuracy 0.0)",
            id="real-accuracy-zero",
        ),
        pytest.param(
            {"min_category_accuracy": 0.8},
            {"per_class_accuracy": {"shirt": float("nan"), "bag": 0.99}},
            "shirt (accuracy nan)",
            id="accuracy-nan",
        ),
        pytest.param(
            {"min_category_accuracy": 0.8},
            {"per_class_accuracy": {"shirt": "0.95", "bag": 0.99}},
            "shirt (accuracy '0.95')",
            id="accuracy-not-a-number",
        ),
    ],
)
def test_a_category_gate_fails_when_a_categorys_value_is_not_measured(
    gates: dict[str, float], metrics: dict[str, Any], why: str
) -> None:
    # Given only a per-category gate, and metrics where shirt's value (or the real bar it is read against) is
    # missing, not a number, NaN or 0
    promotion_gates = PromotionGates(**ONLY_CATEGORY_GATES, **gates)
    # When the gates are applied
    [check] = promotion_gates.checks(metrics)
    # Then the gate fails naming shirt as not measured (before: a missing or 0 real accuracy made the floor 0,
    # and NaN < floor is False, so each passed)
    assert not check.passed
    assert check.reason is not None and f"per-category accuracy not measured: {why}" in check.reason
    assert "shirt" in check.value and "not measured" in check.value
    assert promotion_gates.failures(metrics) == [check.reason]


def test_a_category_of_the_model_missing_from_the_metrics_fails_the_category_gate() -> None:
    # Given a model of shirt and bag whose per-category accuracy names bag only, and bag far above the floor
    gates = PromotionGates(**ONLY_CATEGORY_GATES, min_category_accuracy=0.8)
    metrics = {"per_class_accuracy": {"bag": 0.99}}
    # Then with the model's categories the gate fails naming shirt (before: shirt was never checked)
    [check] = gates.checks(metrics, ["shirt", "bag"])
    assert not check.passed and check.reason is not None
    assert "not measured: shirt (accuracy missing)" in check.reason
    assert check.value == "lowest: bag 0.990; not measured: shirt"
    # And every category measured and above the floor passes
    assert gates.failures({"per_class_accuracy": {"bag": 0.99, "shirt": 0.85}}, ["shirt", "bag"]) == []


def test_promotion_is_refused_when_a_category_of_the_version_is_not_measured(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a version of categories a and b whose per-category metrics measure a only (a and b real too)
    ref = _register(
        session_factory,
        {**GOOD, "per_class_accuracy": {"a": 0.99}, "real_per_class_accuracy": {"a": 0.99, "b": 0.99}},
    )
    # When the operator requires every category at 0.9 of the evaluator's real accuracy
    monkeypatch.setenv("CATALOGAN_GATE_MIN_CATEGORY_ACCURACY_RATIO", "0.9")
    # Then promotion is refused naming b as not measured (before: it was promoted)
    with pytest.raises(PromotionRefusedError, match=r"not measured: b \(accuracy missing\)"):
        promote_version(session_factory, ref)
    assert get_version(session_factory, ref).status is ModelVersionStatus.CANDIDATE
    # And once b is measured above its floor, the same gates promote it
    record_metrics(session_factory, ref, {"per_class_accuracy": {"a": 0.99, "b": 0.95}})
    assert promote_version(session_factory, ref).status is ModelVersionStatus.PRODUCTION


def test_promoting_a_new_version_retires_the_old_one(session_factory: sessionmaker[Session]) -> None:
    old, new = _register(session_factory, GOOD), _register(session_factory)
    promote_version(session_factory, old)
    record_metrics(session_factory, new, GOOD)
    promote_version(session_factory, new)
    statuses = {f"{r.name}@{r.version}": r.status for r in list_versions(session_factory)}
    assert statuses == {old: ModelVersionStatus.RETIRED, new: ModelVersionStatus.PRODUCTION}


def test_transitions_follow_the_map(session_factory: sessionmaker[Session]) -> None:
    ref = _register(session_factory, GOOD)
    retire_version(session_factory, ref)
    # retired → production is not allowed (it must become a candidate again first)
    with pytest.raises(InvalidTransitionError, match="'retired' to 'production'"):
        promote_version(session_factory, ref)
    with pytest.raises(InvalidTransitionError):
        retire_version(session_factory, ref)


def test_concurrent_registrations_and_promotions_stay_consistent(
    session_factory: sessionmaker[Session],
) -> None:
    import threading
    from functools import partial

    # Given six threads registering versions of one name at once
    refs: list[str] = []
    errors: list[BaseException] = []

    def run(target: Callable[[], object]) -> None:
        try:
            result = target()
            if isinstance(result, str):
                refs.append(result)
        except BaseException as exc:
            errors.append(exc)

    def start_all(targets: list[Callable[[], object]]) -> None:
        threads = [threading.Thread(target=run, args=(t,)) for t in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    start_all([lambda: _register(session_factory, GOOD) for _ in range(6)])
    # Then each got its own version number
    assert not errors and sorted(refs) == [f"fashion-cgan@{v}" for v in range(1, 7)]
    # And when all six are promoted at once, exactly one ends in production
    promotions: list[Callable[[], object]] = [partial(promote_version, session_factory, ref) for ref in refs]
    start_all(promotions)
    statuses = [row.status for row in list_versions(session_factory, "fashion-cgan")]
    assert statuses.count(ModelVersionStatus.PRODUCTION) == 1
