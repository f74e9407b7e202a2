"""The pruned near-copy search (`workers.quality_gate._PrunedSearch`) decides as the full search does.

Clustered features (like an evaluator's: classes, and images near each other within a class), queries that
are exact copies, near copies either side of the threshold, and fresh points; thresholds from tiny to large.
The float64 brute force is the truth; a decision may differ from it only for a distance within float32
rounding of the threshold.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.quality_gate import PROJECTED_DIMS, _PrunedSearch


def _features(seed: int, rows: int = 3000, dims: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(reference (rows, dims), queries (600, dims)) float32: 10 clusters, anisotropic like learnt features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 0.5, (10, dims))  # norms about 6, as the shipped index's (5.4 to 8.9)
    scales = np.geomspace(0.5, 0.02, dims)  # a few strong directions, many weak ones
    labels = rng.integers(0, 10, rows)
    reference = centres[labels] + rng.normal(0.0, 1.0, (rows, dims)) * scales
    picked = reference[rng.integers(0, rows, 300)]
    directions = rng.normal(0.0, 1.0, (300, dims))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    near = picked + directions * rng.uniform(0.0, 0.6, (300, 1))  # copies moved by 0 to 0.6
    fresh = centres[rng.integers(0, 10, 200)] + rng.normal(0.0, 1.0, (200, dims)) * scales
    queries = np.concatenate([picked[:100], near, fresh])
    return reference.astype(np.float32), queries.astype(np.float32)


def _truth(reference: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's nearest distance, float64 brute force."""
    ref, qs = reference.astype(np.float64), queries.astype(np.float64)
    d2 = (qs * qs).sum(1)[:, None] + (ref * ref).sum(1)[None, :] - 2.0 * qs @ ref.T
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def _full_float32(reference: np.ndarray, queries: np.ndarray, threshold: float) -> np.ndarray:
    """The unpruned search (every pair, one float32 product per block of 8), as the gate ran it before."""
    ref = torch.from_numpy(reference)
    ref_sq = (ref * ref).sum(1)
    flags = []
    for start in range(0, len(queries), 8):
        block = torch.from_numpy(queries[start : start + 8])
        d2 = (block * block).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * block @ ref.T
        flags.append(d2.min(dim=1).values.clamp_min(0.0).sqrt().double() < threshold)
    return torch.cat(flags).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantile", [0.05, 0.2, 0.5, 0.8])
def test_the_pruned_search_flags_exactly_the_queries_within_the_threshold(seed: int, quantile: float) -> None:
    # Given clustered training features and queries at every distance from them
    reference, queries = _features(seed)
    nearest = _truth(reference, queries)
    threshold = float(np.quantile(nearest[nearest > 1e-3], quantile))  # of the non-copies
    # When the pruned search checks the queries in blocks of 8, as the gate does
    search = _PrunedSearch(reference, threshold, torch.device("cpu"))
    flagged = torch.cat([search.near(torch.from_numpy(queries[i : i + 8])) for i in range(0, 600, 8)]).numpy()
    # Then it flags the queries closer than the threshold and no other, but where float32 arithmetic (the
    # gate's, with or without pruning: |f|² + |r|² - 2 f·r) cannot tell: within 1e-5 (|f|² + max |r|²) of
    # the threshold in squared distance
    rounding = 1e-5 * (
        (queries.astype(np.float64) ** 2).sum(1) + (reference.astype(np.float64) ** 2).sum(1).max()
    )
    clear = np.abs(nearest**2 - threshold**2) > rounding
    assert clear.sum() > 500
    np.testing.assert_array_equal(flagged[clear], (nearest < threshold)[clear])
    # And it decides as the unpruned float32 search the gate ran before, but at that edge
    np.testing.assert_array_equal(flagged[clear], _full_float32(reference, queries, threshold)[clear])
    # And the exact copies are always flagged, and both decisions occur
    assert flagged[:100].all() and 0 < flagged.sum() < 600


def test_the_projected_bound_never_exceeds_a_true_distance() -> None:
    # Given clustered features and the search's projection basis
    reference, queries = _features(3, rows=500)
    search = _PrunedSearch(reference, 1.0, torch.device("cpu"))
    basis = search.basis.double().numpy()
    # Then the basis is orthonormal and no projected squared distance exceeds the full one
    np.testing.assert_allclose(basis.T @ basis, np.eye(PROJECTED_DIMS), atol=1e-6)
    differences = queries.astype(np.float64)[:50, None, :] - reference.astype(np.float64)[None, :, :]
    full = (differences**2).sum(-1)
    projected = ((differences @ basis) ** 2).sum(-1)
    assert (projected <= full * (1 + 1e-6) + 1e-9).all()


def test_a_zero_threshold_or_an_empty_index_flags_nothing() -> None:
    reference, queries = _features(4, rows=200)
    copies = torch.from_numpy(reference[:8])  # distance 0, yet nothing is closer than 0
    assert not _PrunedSearch(reference, 0.0, torch.device("cpu")).near(copies).any()
    empty = np.zeros((0, 128), dtype=np.float32)
    assert not _PrunedSearch(empty, 1.0, torch.device("cpu")).near(torch.from_numpy(queries[:8])).any()


def test_copies_moved_inside_the_projected_axes_are_decided_at_the_threshold() -> None:
    # Given training features and queries moved from training rows along the search's own projection axes,
    # where the projected bound is as tight as it can be (it equals the full distance)
    reference, _ = _features(5)
    threshold = 0.3
    search = _PrunedSearch(reference, threshold, torch.device("cpu"))
    rng = np.random.default_rng(5)
    basis = search.basis.double().numpy()  # (D, k)
    directions = basis @ rng.normal(0.0, 1.0, (PROJECTED_DIMS, 200))  # (D, 200), inside the span
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    moved = np.concatenate([np.full(100, 0.99 * threshold), np.full(100, 1.01 * threshold)])
    origins = reference[rng.choice(len(reference), 200, replace=False)].astype(np.float64)
    queries = (origins + directions.T * moved[:, None]).astype(np.float32)
    # When they are checked
    flagged = torch.cat([search.near(torch.from_numpy(queries[i : i + 8])) for i in range(0, 200, 8)]).numpy()
    # Then those 1% inside the threshold are near copies and those 1% outside are not (unless another
    # training row is closer, which the float64 truth says)
    np.testing.assert_array_equal(flagged, _truth(reference, queries) < threshold)
    assert flagged[:100].all()


def test_a_threshold_that_prunes_nothing_falls_back_to_the_full_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a threshold above every distance (every pair survives the bound)
    reference, queries = _features(6, rows=400)
    search = _PrunedSearch(reference, 100.0, torch.device("cpu"))
    gathered: list[int] = []
    index_select = torch.Tensor.__getitem__

    def spy(self: torch.Tensor, key: object) -> torch.Tensor:
        if isinstance(key, torch.Tensor) and key.dtype == torch.int64 and self.dim() == 2:
            gathered.append(len(key))
        return index_select(self, key)

    monkeypatch.setattr(torch.Tensor, "__getitem__", spy)
    # When a block is checked, then every query is a near copy, and no (pair × dims) gather was made
    assert search.near(torch.from_numpy(queries[:8])).all()
    assert gathered == []
