"""Promotion of a model version behind metric gates: the gates (`CATALOGAN_GATE_*`) and `promote_version`.

Torch-free and in db/ so that `catalogan models promote` (through `models.registry`, which re-exports these)
and the console's promote button apply the same gates without the console importing `models`. A promotion
below any gate, or without the gate's metric, is refused with `PromotionRefusedError` unless forced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import PromotionRefusedError
from db.model_versions import resolve_model_version, transition_model_version
from db.settings import BaseSettings  # pydantic-settings whose errors name the CATALOGAN_* variable
from db.status import ModelVersionStatus
from db.tables import ModelVersion


@dataclass(frozen=True)
class GateCheck:
    """One promotion gate applied to a version's metrics."""

    gate: str  # the setting's name without its prefix, e.g. "min_cas"
    bound: str  # e.g. "≥ 0.75"
    value: str  # the measured value as shown, or "not measured"
    passed: bool
    reason: str | None = None  # why it failed, in words

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


class PromotionGates(BaseSettings):
    """Metric gates for `catalogan models promote` (`CATALOGAN_GATE_MIN_CONDITIONAL_ACCURACY`, …).

    The per-category gates read `per_class_accuracy` (the generated images' conditional accuracy per
    category) and, for the ratio, `real_per_class_accuracy` (the evaluator's accuracy on real images of the
    category) — both recorded by `catalogan evaluate NAME@V --record` and `catalogan train --evaluate`. Every
    category of the model version (`categories`, else those the metrics name) must be measured: a missing,
    non-numeric or non-finite accuracy, or a real accuracy that is missing or not above 0, fails the gate as
    "not measured", never as a floor of 0.
    """

    model_config = SettingsConfigDict(env_prefix="CATALOGAN_GATE_", extra="ignore", frozen=True)

    min_conditional_accuracy: float | None = Field(
        default=0.90, description="evaluator label = requested category"
    )
    min_cas: float | None = Field(default=0.75, description="classifier trained on generated, tested on real")
    max_fid_fm: float | None = Field(
        default=None, description="Fréchet distance in the evaluator's feature space"
    )
    min_category_accuracy: float | None = Field(
        default=None, description="floor for every category's conditional accuracy"
    )
    min_category_accuracy_ratio: float | None = Field(
        default=None,
        description="floor for every category's conditional accuracy, as a fraction of the evaluator's "
        "accuracy on real images of that category",
    )

    def checks(self, metrics: Mapping[str, Any], categories: Sequence[str] | None = None) -> list[GateCheck]:
        """Every configured gate (unset ones are skipped) against `metrics`.

        `categories` are the model version's (`ModelVersion.categories`): the per-category gates require each
        of them in `per_class_accuracy`. Without them (or with none), the categories the metrics name.
        """
        result: list[GateCheck] = []
        for metric, bound, higher_is_better in (
            ("conditional_accuracy", self.min_conditional_accuracy, True),
            ("cas", self.min_cas, True),
            ("fid_fm", self.max_fid_fm, False),
        ):
            if bound is None:
                continue
            gate = f"{'min' if higher_is_better else 'max'}_{metric}"
            shown = f"{'≥' if higher_is_better else '≤'} {bound}"
            value = metrics.get(metric)
            if not isinstance(value, int | float) or isinstance(value, bool):
                result.append(
                    GateCheck(gate, shown, "not measured", False, f"{metric} not measured (gate {shown})")
                )
                continue
            passed = float(value) >= bound if higher_is_better else float(value) <= bound
            reason = (
                None
                if passed
                else f"{metric} = {float(value):.4g} {'<' if higher_is_better else '>'} gate {bound}"
            )
            result.append(GateCheck(gate, shown, f"{float(value):.4g}", passed, reason))
        if self.min_category_accuracy is not None:
            result.append(self._category_check(metrics, categories, self.min_category_accuracy, ratio=False))
        if self.min_category_accuracy_ratio is not None:
            result.append(
                self._category_check(metrics, categories, self.min_category_accuracy_ratio, ratio=True)
            )
        return result

    @staticmethod
    def _category_check(
        metrics: Mapping[str, Any], categories: Sequence[str] | None, bound: float, *, ratio: bool
    ) -> GateCheck:
        gate = "min_category_accuracy_ratio" if ratio else "min_category_accuracy"
        shown = f"≥ {bound} × real, every category" if ratio else f"≥ {bound}, every category"
        accuracy = metrics.get("per_class_accuracy")
        real = metrics.get("real_per_class_accuracy") if ratio else None
        if not isinstance(accuracy, Mapping) or not accuracy or (ratio and not isinstance(real, Mapping)):
            needed = "per_class_accuracy" + (" and real_per_class_accuracy" if ratio else "")
            return GateCheck(gate, shown, "not measured", False, f"{needed} not measured (gate {shown})")
        # The model's categories first, then any other the metrics name: each one is held to the floor.
        names = [str(category) for category in categories or ()]
        names += [str(category) for category in accuracy if str(category) not in names]
        measured: dict[str, float] = {}
        unmeasured: dict[str, str] = {}  # category → what is missing, as shown
        below: list[str] = []
        for category in names:
            value = finite_metric(accuracy.get(category))
            if value is None:
                unmeasured[category] = f"accuracy {_shown(accuracy, category)}"
                continue
            measured[category] = value
            floor = bound
            if isinstance(real, Mapping):
                real_value = finite_metric(real.get(category))
                if real_value is None or real_value <= 0:
                    # A floor of bound × 0 would pass anything: the bar itself was not measured.
                    unmeasured[category] = f"real accuracy {_shown(real, category)}"
                    continue
                floor = bound * real_value
            if value < floor:
                below.append(f"{category} {value:.3f} < {floor:.3f}")
        reasons = []
        if unmeasured:
            missing = ", ".join(f"{category} ({what})" for category, what in unmeasured.items())
            reasons.append(f"per-category accuracy not measured: {missing} (gate {shown})")
        if below:
            reasons.append(f"per-category accuracy below the floor: {', '.join(below)}")
        parts = []
        if measured:
            worst = min(measured, key=measured.__getitem__)
            parts.append(f"lowest: {worst} {measured[worst]:.3f}")
        if unmeasured:
            parts.append(f"not measured: {', '.join(unmeasured)}")
        return GateCheck(gate, shown, "; ".join(parts), not reasons, "; ".join(reasons) or None)

    def failures(self, metrics: Mapping[str, Any], categories: Sequence[str] | None = None) -> list[str]:
        """Why `metrics` do not pass the gates (empty when they do); `categories` as for `checks`."""
        return [check.reason or check.gate for check in self.checks(metrics, categories) if not check.passed]


def finite_metric(value: Any) -> float | None:
    """`value` as a finite float; None for a missing, non-numeric (bools included) or NaN/infinite one."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def _shown(values: Mapping[str, Any], category: str) -> str:
    """How a per-category value reads in a reason: "missing", or its value (cut at 32 characters)."""
    if category not in values:
        return "missing"
    text = repr(values[category])
    return text if len(text) <= 32 else f"{text[:31]}…"


def promote_version(
    session_factory: sessionmaker[Session],
    ref: str,
    *,
    gates: PromotionGates | None = None,
    force: bool = False,
) -> ModelVersion:
    """Make `name@version` the production version of its name; refuse below the gates unless `force`."""
    gates = gates or PromotionGates()
    with transaction(session_factory) as session:
        row = resolve_model_version(session, ref)
        reasons = gates.failures(row.metrics or {}, row.categories)
        if reasons and not force:
            raise PromotionRefusedError(
                f"model {row.name}@{row.version} is below the promotion gates: {'; '.join(reasons)} (use --force)"
            )
        return transition_model_version(session, row, ModelVersionStatus.PRODUCTION)
