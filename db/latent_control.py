"""Creative control, the torch-free half: the *recipe* of a job's latents, resolved at submit and checked.

A job may ask for truncation ψ, for variations of a delivered image, or for an interpolation between two
(`db.job_specs.JobSpec`). At submit (and estimate), `resolve_latent_control` checks the source images
(delivered, of the same tenant, of a finished job that has not expired, the very file when the client gave its
sha256, one model version, one category) and writes what the worker needs into the job's options under
`latent_control`, as plain JSON (the *recipe*):

    {"truncation": 0.7}                                          # only when ψ != 1.0
    {"variation": {"source": SOURCE, "strength": 0.3}, "truncation": 0.7}
    {"interpolation": {"start": SOURCE, "end": SOURCE, "frames": 8}}
    SOURCE = {"job_id": ..., "index": 3, "seed": ..., "redraw": 0, "control": <the source job's recipe>}

A source carries its own job's recipe, so a variation of a variation is recomputed from seeds alone
(`MAX_SOURCE_DEPTH` generations at most). The recipe goes into every file's provenance
(`provenance_fields`), which is how `catalogan verify --regenerate` recomputes such images without SQL.
`models.latent_control` turns a recipe into latents; a job without a recipe renders exactly as before.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import PlanningError
from db.job_specs import (
    LATENT_CONTROL_OPTION,
    MAX_FRAMES,
    MAX_IMAGES_PER_JOB,
    MAX_JOB_ID_CHARS,
    MAX_SEED,
    MAX_TRUNCATION,
    MIN_TRUNCATION,
    ImageRef,
    JobSpec,
)
from db.status import ImageStatus, JobStatus
from db.tables import Image, Job, utcnow

__all__ = [
    "MAX_SOURCE_DEPTH",
    "SOURCE_JOB_STATUSES",
    "ResolvedControl",
    "canonical_json",
    "control_of_options",
    "parse_control",
    "provenance_fields",
    "recipe_truncation",
    "resolve_latent_control",
    "truncation_recipe",
]

# A source image's job must be finished with its images delivered: not queued or running (a retry of failed
# images runs it again), not failed (nothing delivered), not cancelled or cancelling.
SOURCE_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.COMPLETED_WITH_FAILURES})
# Generations of sources one recipe may nest (a variation of a variation of ...): bounds the recipe's size
# (an interpolation doubles it per generation) and the work of recomputing it.
MAX_SOURCE_DEPTH = 4


@dataclass(frozen=True, slots=True)
class ResolvedControl:
    """A control job after its sources were checked: the recipe, and the item and model it implies."""

    recipe: dict[str, Any]
    category: str
    count: int
    model_version_id: int


@dataclass(frozen=True, slots=True)
class _Source:
    recipe: dict[str, Any]
    category: str
    model_version_id: int
    truncation: float


def control_of_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The recipe a job row's options hold, or None (a plain job)."""
    control = (options or {}).get(LATENT_CONTROL_OPTION)
    return dict(control) if control else None


def recipe_truncation(recipe: Mapping[str, Any] | None) -> float:
    """ψ of a recipe (1.0 when it has none)."""
    return float((recipe or {}).get("truncation", 1.0))


def _depth(recipe: Mapping[str, Any] | None) -> int:
    """Generations of sources below a recipe: 0 for a plain or truncated job."""
    if not recipe:
        return 0
    if "variation" in recipe:
        sources = [recipe["variation"]["source"]]
    elif "interpolation" in recipe:
        sources = [recipe["interpolation"]["start"], recipe["interpolation"]["end"]]
    else:
        return 0
    return 1 + max(_depth(source.get("control")) for source in sources)


def _load_source(session: Session, ref: ImageRef, tenant_id: str, field: str, now: dt.datetime) -> _Source:
    """A delivered image of this tenant's finished, unexpired job as a recipe source; `PlanningError` naming
    `field` (or `field.sha256`) and the rule otherwise."""
    row = session.execute(
        select(
            Image.category,
            Image.redraws,
            Image.status,
            Image.sha256,
            Job.seed,
            Job.model_version_id,
            Job.options,
            Job.status.label("job_status"),
            Job.expires_at,
        )
        .join(Job, Job.id == Image.job_id)
        .where(Image.job_id == ref.job_id, Image.index == ref.index, Job.tenant_id == tenant_id)
    ).one_or_none()
    # Another tenant's image answers exactly as a missing one: its existence is not revealed (nor its job's
    # status, expiry or hash, checked only below).
    if row is None or row.status is not ImageStatus.SUCCEEDED:
        raise PlanningError(
            field,
            "delivered_image",
            f"{field}: no delivered image {ref.index} in job {ref.job_id} of this tenant",
        )
    if row.job_status not in SOURCE_JOB_STATUSES:
        raise PlanningError(
            field,
            "finished_job",
            f"{field}: job {ref.job_id} is {row.job_status.value}; a source is an image of a finished job "
            f"({' or '.join(sorted(status.value for status in SOURCE_JOB_STATUSES))})",
        )
    if row.expires_at is not None and row.expires_at <= now:
        raise PlanningError(
            field,
            "not_expired",
            f"{field}: job {ref.job_id} expired at {row.expires_at.isoformat()} (its images are being "
            "deleted); a source is an image of a job that is kept",
        )
    if ref.sha256 is not None and ref.sha256 != row.sha256:
        raise PlanningError(
            f"{field}.sha256",
            "recorded_sha256",
            f"{field}.sha256: the file is not image {ref.index} of job {ref.job_id} as delivered (its sha256 "
            "differs from the one recorded): an edited or re-encoded copy",
        )
    control = control_of_options(row.options)
    if _depth(control) >= MAX_SOURCE_DEPTH:
        raise PlanningError(
            field,
            "source_depth",
            f"{field}: that image is already {MAX_SOURCE_DEPTH} generations of variations/interpolations "
            "deep; start from one of its sources",
        )
    recipe: dict[str, Any] = {
        "job_id": ref.job_id,
        "index": ref.index,
        "seed": int(row.seed),
        "redraw": int(row.redraws or 0),
    }
    if control:
        recipe["control"] = control
    return _Source(recipe, row.category, int(row.model_version_id), recipe_truncation(control))


def resolve_latent_control(
    session: Session, spec: JobSpec, tenant_id: str, *, now: dt.datetime | None = None
) -> ResolvedControl | None:
    """The recipe of a variation or interpolation job, its sources checked; None for any other job.

    Raises `PlanningError` naming the field: a source that is not a delivered image of this tenant
    (`delivered_image`), of a job that is not finished (`finished_job`: succeeded or completed_with_failures)
    or has expired (`not_expired`, `now` or later: being deleted), not the file the client holds
    (`field.sha256`, `recorded_sha256`), too deep (`source_depth`), two ends of other model versions
    (`same_model_version`) or categories (`same_category`).
    """
    now = now or utcnow()
    if spec.variation is not None:
        source = _load_source(session, spec.variation.source, tenant_id, "variation.source", now)
        truncation = spec.truncation if spec.truncation is not None else source.truncation
        recipe: dict[str, Any] = {"variation": {"source": source.recipe, "strength": spec.variation.strength}}
        if truncation != 1.0:
            recipe["truncation"] = truncation
        return ResolvedControl(recipe, source.category, spec.variation.count, source.model_version_id)
    if spec.interpolation is not None:
        start = _load_source(session, spec.interpolation.start, tenant_id, "interpolation.start", now)
        end = _load_source(session, spec.interpolation.end, tenant_id, "interpolation.end", now)
        if end.model_version_id != start.model_version_id:
            raise PlanningError(
                "interpolation.end",
                "same_model_version",
                "interpolation.end: made by another model version than interpolation.start; "
                "interpolate between images of one model version",
            )
        if end.category != start.category:
            raise PlanningError(
                "interpolation.end",
                "same_category",
                f"interpolation.end: category {end.category!r}, interpolation.start: {start.category!r}; "
                "interpolate between images of one category",
            )
        recipe = {
            "interpolation": {
                "start": start.recipe,
                "end": end.recipe,
                "frames": spec.interpolation.frames,
            }
        }
        return ResolvedControl(recipe, start.category, spec.interpolation.frames, start.model_version_id)
    return None


def truncation_recipe(truncation: float | None) -> dict[str, Any] | None:
    """The recipe of a plain job (or a preview) with this ψ: `{"truncation": ψ}` when ψ != 1.0, else None
    (today's latents, untouched)."""
    if truncation is None or truncation == 1.0:
        return None
    return {"truncation": float(truncation)}


def canonical_json(recipe: Mapping[str, Any]) -> str:
    """The recipe as compact, key-sorted JSON (what a file's provenance carries; floats round-trip exactly)."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _ref_text(source: Mapping[str, Any]) -> str:
    return f"{source['job_id']}/{source['index']}"


def provenance_fields(recipe: Mapping[str, Any] | None, index: int) -> tuple[tuple[str, str], ...]:
    """Provenance text fields of image `index` of a job with this recipe: readable ones, then the recipe.

    () for a plain job, so its files keep their bytes. Readable: `truncation`, `variation_of`
    (job/index), `strength`, `interpolation` (job/index..job/index), `frame` (index/last). `ValueError` for
    an interpolation whose frames do not include `index` (no job makes such an image).
    """
    if not recipe:
        return ()
    fields: list[tuple[str, str]] = []
    if "truncation" in recipe:
        fields.append(("truncation", repr(float(recipe["truncation"]))))
    if "variation" in recipe:
        variation = recipe["variation"]
        fields += [
            ("variation_of", _ref_text(variation["source"])),
            ("strength", repr(float(variation["strength"]))),
        ]
    if "interpolation" in recipe:
        interpolation = recipe["interpolation"]
        _check_frame(index, int(interpolation["frames"]), "frame")
        fields += [
            ("interpolation", f"{_ref_text(interpolation['start'])}..{_ref_text(interpolation['end'])}"),
            ("frame", f"{index}/{int(interpolation['frames']) - 1}"),
        ]
    fields.append(("latent_control", canonical_json(recipe)))
    return tuple(fields)


def _check_frame(index: int, frames: int, what: str) -> None:
    """`ValueError` unless image `index` is a frame of an interpolation of `frames` frames (0..frames-1): a
    file claiming frame 9 of 5 would be rendered off the path (t > 1), an image no job could have made."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < frames:
        raise ValueError(f"{what}: image {index} is not a frame of an interpolation of {frames} frames")


def _number(value: Any, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: not a number")
    if not low <= value <= high:
        raise ValueError(f"{what}: {value} is outside {low}..{high}")
    return float(value)


def _integer(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what}: must be an integer in {low}..{high}")
    return value


def _check_source(source: Any, depth: int, what: str) -> None:
    if not isinstance(source, dict) or set(source) - {"job_id", "index", "seed", "redraw", "control"}:
        raise ValueError(f"{what}: must be {{job_id, index, seed, redraw[, control]}}")
    job_id = source.get("job_id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_JOB_ID_CHARS:
        raise ValueError(f"{what}.job_id: must be a job id")
    _integer(source.get("index"), 0, MAX_IMAGES_PER_JOB, f"{what}.index")
    _integer(source.get("seed"), 0, MAX_SEED, f"{what}.seed")
    _integer(source.get("redraw"), 0, 1 << 16, f"{what}.redraw")
    if "control" in source:
        _check_recipe(source["control"], depth + 1, f"{what}.control")
        if "interpolation" in source["control"]:  # a frame as a source: one its job could have made
            _check_frame(source["index"], source["control"]["interpolation"]["frames"], f"{what}.index")


def _check_recipe(recipe: Any, depth: int, what: str) -> None:
    if depth > MAX_SOURCE_DEPTH:
        raise ValueError(f"{what}: sources nested deeper than {MAX_SOURCE_DEPTH}")
    if (
        not isinstance(recipe, dict)
        or not recipe
        or set(recipe) - {"truncation", "variation", "interpolation"}
    ):
        raise ValueError(f"{what}: must hold truncation, variation or interpolation")
    if "variation" in recipe and "interpolation" in recipe:
        raise ValueError(f"{what}: variation and interpolation at once")
    if "truncation" in recipe:
        _number(recipe["truncation"], MIN_TRUNCATION, MAX_TRUNCATION, f"{what}.truncation")
    if "variation" in recipe:
        variation = recipe["variation"]
        if not isinstance(variation, dict) or set(variation) != {"source", "strength"}:
            raise ValueError(f"{what}.variation: must be {{source, strength}}")
        _number(variation["strength"], 0.0, 1.0, f"{what}.variation.strength")
        _check_source(variation["source"], depth, f"{what}.variation.source")
    if "interpolation" in recipe:
        interpolation = recipe["interpolation"]
        if not isinstance(interpolation, dict) or set(interpolation) != {"start", "end", "frames"}:
            raise ValueError(f"{what}.interpolation: must be {{start, end, frames}}")
        if "truncation" in recipe:
            raise ValueError(f"{what}: truncation with interpolation")
        _integer(interpolation["frames"], 2, MAX_FRAMES, f"{what}.interpolation.frames")
        _check_source(interpolation["start"], depth, f"{what}.interpolation.start")
        _check_source(interpolation["end"], depth, f"{what}.interpolation.end")


def parse_control(text: str, *, index: int | None = None) -> dict[str, Any]:
    """A recipe read back from a file's provenance, checked (a file may be hostile); `ValueError` otherwise.

    With `index` (the file's image index), also that a job with this recipe could have made that image: an
    interpolation's image is one of its frames (0..frames-1)."""
    try:
        recipe = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"latent_control: not JSON ({exc})") from exc
    _check_recipe(recipe, 0, "latent_control")
    if index is not None and "interpolation" in recipe:
        _check_frame(index, recipe["interpolation"]["frames"], "latent_control.interpolation.frames")
    return dict(recipe)
