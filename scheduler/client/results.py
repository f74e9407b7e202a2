"""What the API answered, as frozen dataclasses: `Job` (and a `JobPage` of them), `Image`, `Estimate`, `Model`
and `PreviewImage`, each built from its JSON body (`from_json`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "completed_with_failures", "failed", "cancelled"})


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the API reported it when this object was made."""

    id: str
    status: str
    model_name: str | None
    model_version: int | None
    seed: int
    images_total: int
    images_done: int
    images_failed: int
    images_rejected: int
    chunks_total: int
    chunks_finished: int
    progress: float
    eta_seconds: float | None
    cancel_requested: bool
    webhook_url: str | None
    error: str | None
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    replayed: bool = False
    items_skipped_existing: int = 0  # items an earlier job already delivered (client_item_id)
    images_skipped_existing: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)  # the labels given at submit
    retention_days: int | None = None  # days kept once finished (None: until deleted)
    expires_at: dt.datetime | None = None  # when its objects and rows are deleted (None while it runs)
    queue: str = "bulk"  # the queue (priority) its chunks go to
    webhook_events: Sequence[str] | None = None  # the events sent for it (None = every event)
    # Creative control (docs/controlling.md), as the API's job view has it: ψ (None = 1.0, off);
    # `{"source": {"job_id", "index"}, "strength", "count"}` of a variations job; `{"start", "end", "frames"}`
    # of an interpolation (None for any other job).
    truncation: float | None = None
    variation: Mapping[str, Any] | None = None
    interpolation: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True once the job succeeded, completed with failures, failed or was cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def completed_with_failures(self) -> bool:
        """True when some images failed and the others were delivered (`retry_job` runs the failed ones)."""
        return self.status == "completed_with_failures"

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, replayed: bool = False) -> Job:
        """Build from a `JobPublic` body."""
        counts = body.get("counts", {})
        model = body.get("model") or {}
        return cls(
            id=body["id"],
            status=body["status"],
            model_name=model.get("name"),
            model_version=model.get("version"),
            seed=body["seed"],
            images_total=counts.get("images_total", 0),
            images_done=counts.get("images_done", 0),
            images_failed=counts.get("images_failed", 0),
            images_rejected=counts.get("images_rejected", 0),
            chunks_total=counts.get("chunks_total", 0),
            chunks_finished=counts.get("chunks_finished", 0),
            items_skipped_existing=counts.get("items_skipped_existing", 0),
            images_skipped_existing=counts.get("images_skipped_existing", 0),
            progress=body.get("progress", 0.0),
            eta_seconds=body.get("eta_seconds"),
            cancel_requested=body.get("cancel_requested", False),
            webhook_url=body.get("webhook_url"),
            error=body.get("error"),
            created_at=_time(body.get("created_at")),
            started_at=_time(body.get("started_at")),
            finished_at=_time(body.get("finished_at")),
            replayed=replayed,
            metadata=dict(body.get("metadata") or {}),
            retention_days=body.get("retention_days"),
            expires_at=_time(body.get("expires_at")),
            queue=body.get("queue", "bulk"),
            webhook_events=body.get("webhook_events"),
            truncation=body.get("truncation"),
            variation=body.get("variation"),
            interpolation=body.get("interpolation"),
            raw=dict(body),
        )


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs and the cursor of the next one (None at the end)."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Image:
    """One image of a job, with a presigned `url` valid until `url_expires_at`."""

    index: int
    category: str
    sku: str | None
    status: str
    key: str | None
    sha256: str | None
    size_bytes: int | None
    url: str | None
    url_expires_at: dt.datetime | None
    error: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Image:
        """Build from an `ImagePublic` body."""
        return cls(
            index=body["index"],
            category=body["category"],
            sku=body.get("sku"),
            status=body["status"],
            key=body.get("key"),
            sha256=body.get("sha256"),
            size_bytes=body.get("size_bytes"),
            url=body.get("url"),
            url_expires_at=_time(body.get("url_expires_at")),
            error=body.get("error"),
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """A dry-run estimate of a job."""

    images: int
    chunks: int
    seconds: float
    images_per_second: float
    throughput_basis: str
    quota_cost: int | None = None  # what the job would charge to the daily quota (images × (1 + max_redraws))
    model_name: str | None = None  # the model version the job would run
    model_version: int | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Estimate:
        """Build from an `EstimatePublic` body."""
        model = body.get("model") or {}
        return cls(
            images=body["images"],
            chunks=body["chunks"],
            seconds=body["seconds"],
            images_per_second=body["images_per_second"],
            throughput_basis=body["throughput_basis"],
            quota_cost=body.get("quota_cost"),
            model_name=model.get("name"),
            model_version=model.get("version"),
        )


@dataclass(frozen=True, slots=True)
class Model:
    """A registered model version."""

    name: str
    version: int
    status: str
    categories: list[Any]
    metrics: dict[str, Any]  # the summary GET /v1/models documents (fid_fm, cas, ...; None: not measured)


@dataclass(frozen=True, slots=True)
class PreviewImage:
    """One preview image (PNG bytes)."""

    index: int
    category: str
    sha256: str
    png: bytes
