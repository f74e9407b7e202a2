"""A job's review decisions as the manifest download reads them: one byte per image index, read in batches."""

from __future__ import annotations

import tracemalloc

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.reviews import ReviewDecisions, review_decisions
from db.tables import ImageReview, ReviewDecision
from tests.db.factories import insert_job

REVIEWED = 200_000


def test_the_table_reads_like_a_mapping_of_the_latest_decisions() -> None:
    decisions = ReviewDecisions(4)
    decisions.set(1, ReviewDecision.APPROVED)
    decisions.set(3, "rejected")
    decisions.set(1, ReviewDecision.REJECTED)  # decided again: the latest decision counts once
    decisions.set(9, ReviewDecision.APPROVED)  # past the size it was made with: the table grows
    assert dict(decisions) == {1: "rejected", 3: "rejected", 9: "approved"}
    assert len(decisions) == 3 and 0 not in decisions and decisions.get(7, "pending") == "pending"
    with pytest.raises(KeyError):
        decisions[-1]
    with pytest.raises(ValueError, match="index -1"):
        decisions.set(-1, ReviewDecision.APPROVED)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_with_many_reviewed_images_is_read_into_one_byte_per_image(
    session_factory: sessionmaker[Session],
) -> None:
    # Given a job of 200,000 images, every one of them reviewed
    rows = insert_job(session_factory, chunks=1, chunk_size=REVIEWED)
    with transaction(session_factory) as session:
        session.execute(
            insert(ImageReview),
            [
                {
                    "job_id": rows.job_id,
                    "index": index,
                    "decision": ReviewDecision.REJECTED if index % 7 == 0 else ReviewDecision.APPROVED,
                    "reviewer_key_id": "k",
                }
                for index in range(REVIEWED)
            ],
        )
    # When a manifest download gathers them
    with session_factory() as session:
        tracemalloc.start()
        try:
            decisions = review_decisions(session, rows.job_id, size=REVIEWED)
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Then every decision is there, and neither the table nor the read costs more than a few bytes an image
    # (a {index: decision} dict of every row held about 100 bytes an image, 20 MB here)
    assert len(decisions) == REVIEWED
    assert (
        decisions[0] == decisions[199_990] == "rejected"
        and decisions[1] == decisions[REVIEWED - 1] == "approved"
    )
    assert held < 2 * REVIEWED, f"{held} bytes held for {REVIEWED} decisions"
    assert peak < 50 * REVIEWED, f"{peak} bytes at peak for {REVIEWED} decisions"
