"""Review decisions on delivered images: a person approves or rejects an image in the console.

One `image_reviews` row per (job, index) holds the latest decision, who made it (the API key's id and
name) and when. Only *delivered* images can be reviewed: rows with status `succeeded` and a stored object.
Each delivered image is in exactly one review state: `approved`, `rejected` or `pending` (no decision yet).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Select, Table, and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.errors import NotFoundError
from db.status import ImageStatus
from db.tables import Image, ImageReview, ReviewDecision, utcnow

__all__ = [
    "MAX_NOTE_CHARS",
    "ReviewCounts",
    "ReviewDecision",
    "ReviewDecisions",
    "ReviewState",
    "count_reviews",
    "delivered",
    "record_reviews",
    "review_decisions",
    "review_join",
    "review_state_condition",
    "reviews_of",
    "where_review_state",
]

MAX_NOTE_CHARS = 1000
_S = TypeVar("_S", bound=Select[*tuple[Any, ...]])


class ReviewState(StrEnum):
    """The review state of a delivered image, as the API's `?review=` filter and the manifest name it."""

    APPROVED = "approved"
    REJECTED = "rejected"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class ReviewCounts:
    """How many of a job's delivered images are approved, rejected and still pending."""

    approved: int
    rejected: int
    pending: int

    @property
    def delivered(self) -> int:
        """Every delivered image (the three states together)."""
        return self.approved + self.rejected + self.pending


def delivered() -> Any:
    """The SQL condition on `Image` for a delivered image: succeeded, with a stored object."""
    return and_(Image.status == ImageStatus.SUCCEEDED, Image.key.is_not(None))


def _review_join() -> Any:
    return and_(ImageReview.job_id == Image.job_id, ImageReview.index == Image.index)


def review_join() -> Any:
    """The ON clause of `Image` outer-joined with `ImageReview` (a review names its image by job and index)."""
    return _review_join()


def review_state_condition(state: ReviewState) -> Any:
    """The condition on a query already outer-joined with `ImageReview` (`review_join`): a delivered image in
    review `state`."""
    if state is ReviewState.PENDING:
        return and_(delivered(), ImageReview.id.is_(None))
    return and_(delivered(), ImageReview.decision == ReviewDecision(state.value))


def where_review_state(query: _S, state: ReviewState) -> _S:
    """Narrow a `select(...)` over `Image` to delivered images in review `state` (adds the outer join)."""
    return query.outerjoin(ImageReview, _review_join()).where(review_state_condition(state))


def record_reviews(
    session: Session,
    job_id: str,
    indices: Sequence[int],
    decision: ReviewDecision,
    *,
    reviewer_key_id: str,
    reviewer_name: str,
    note: str | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Record `decision` on the job's images `indices` (replacing earlier decisions); returns how many.

    Runs in the caller's transaction. Raises `NotFoundError` naming the first index that is not a
    delivered image of the job (nothing is written then). The caller checks that the job is the tenant's.
    """
    wanted = sorted(set(int(index) for index in indices))
    if not wanted:
        return 0
    found = set(
        session.scalars(
            select(Image.index).where(Image.job_id == job_id, Image.index.in_(wanted), delivered())
        )
    )
    missing = [index for index in wanted if index not in found]
    if missing:
        raise NotFoundError(f"image {missing[0]} of job {job_id!r} is not a delivered image")
    now = now or utcnow()
    rows = [
        {
            "job_id": job_id,
            "index": index,
            "decision": decision,
            "reviewer_key_id": reviewer_key_id,
            "reviewer_name": reviewer_name,
            "note": note,
            "decided_at": now,
        }
        for index in wanted
    ]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table: Table = ImageReview.__table__  # type: ignore[assignment]
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.job_id, table.c.index],
        set_={
            column: statement.excluded[column]
            for column in ("decision", "reviewer_key_id", "reviewer_name", "note", "decided_at")
        },
    )
    session.connection().execute(statement, rows)
    return len(rows)


def reviews_of(session: Session, job_id: str, indices: Iterable[int]) -> dict[int, ImageReview]:
    """The review rows of the job's images `indices` that have one, by index."""
    wanted = list(indices)
    if not wanted:
        return {}
    rows = session.scalars(
        select(ImageReview).where(ImageReview.job_id == job_id, ImageReview.index.in_(wanted))
    )
    return {row.index: row for row in rows}


# Review decision rows read from SQL at a time while a job's decisions are gathered.
DECISION_READ_ROWS = 10_000
_DECISION_CODES = {ReviewDecision.APPROVED: 1, ReviewDecision.REJECTED: 2}
_DECISION_VALUES = {code: decision.value for decision, code in _DECISION_CODES.items()}


class ReviewDecisions(Mapping[int, str]):
    """Every decision of one job as {index: "approved" | "rejected"}, one byte per image index.

    A job may hold millions of reviewed images and each manifest download reads them all: a dict would cost
    about 100 bytes an entry (a million-image job about 100 MB per download), this table one byte.
    """

    __slots__ = ("_codes", "_count")

    def __init__(self, size: int = 0) -> None:
        self._codes = bytearray(size)
        self._count = 0

    def set(self, index: int, decision: ReviewDecision | str) -> None:
        """Record `decision` for image `index` (the table grows if `index` is past its size)."""
        if index < 0:
            raise ValueError(f"index {index}: must be at least 0")
        if index >= len(self._codes):
            self._codes.extend(bytes(index + 1 - len(self._codes)))
        self._count += self._codes[index] == 0
        self._codes[index] = _DECISION_CODES[ReviewDecision(decision)]

    def __getitem__(self, index: int) -> str:
        code = self._codes[index] if 0 <= index < len(self._codes) else 0
        if not code:
            raise KeyError(index)
        return _DECISION_VALUES[code]

    def __iter__(self) -> Iterator[int]:
        return (index for index, code in enumerate(self._codes) if code)

    def __len__(self) -> int:
        return self._count


def review_decisions(session: Session, job_id: str, *, size: int = 0) -> ReviewDecisions:
    """Every decision of a job (for the manifest's `review` column), read `DECISION_READ_ROWS` rows at a time
    into a one-byte-per-index table; `size` (the job's `images_total`) sizes it up front."""
    decisions = ReviewDecisions(size)
    rows = session.execute(
        select(ImageReview.index, ImageReview.decision)
        .where(ImageReview.job_id == job_id)
        .execution_options(yield_per=DECISION_READ_ROWS)
    )
    for index, decision in rows:
        decisions.set(int(index), decision)
    return decisions


def count_reviews(session: Session, job_id: str, *, delivered_total: int | None = None) -> ReviewCounts:
    """Approved, rejected and pending counts over the job's delivered images.

    Exact by default: one pass over the job's image rows. With `delivered_total` (the job's `images_done`
    counter, which counts exactly its succeeded images), only the job's reviews are counted (the unique
    (job, index) index) and pending = delivered_total - decided: what a page or a keystroke can afford on a
    million-image job.
    """
    if delivered_total is not None:
        decided = dict(
            session.execute(
                select(ImageReview.decision, func.count())
                .where(ImageReview.job_id == job_id)
                .group_by(ImageReview.decision)
            ).all()
        )
        approved = int(decided.get(ReviewDecision.APPROVED, 0))
        rejected = int(decided.get(ReviewDecision.REJECTED, 0))
        return ReviewCounts(approved, rejected, max(0, int(delivered_total) - approved - rejected))
    rows = session.execute(
        select(ImageReview.decision, func.count())
        .select_from(Image)
        .outerjoin(ImageReview, _review_join())
        .where(Image.job_id == job_id, delivered())
        .group_by(ImageReview.decision)
    ).all()
    counts: dict[ReviewDecision | None, int] = {
        None if decision is None else ReviewDecision(decision): int(n) for decision, n in rows
    }
    return ReviewCounts(
        approved=counts.get(ReviewDecision.APPROVED, 0),
        rejected=counts.get(ReviewDecision.REJECTED, 0),
        pending=counts.get(None, 0),
    )
