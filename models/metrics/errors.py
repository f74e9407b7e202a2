"""Errors raised by the evaluator and the metrics.

CataloganError
└── MetricsError                 raised by models/evaluator.py, models/metrics/, models/evaluation.py
    ├── EvaluatorWeightsError    the evaluator weights are missing or their sha256 does not match
    └── InsufficientSamplesError a metric got too few samples (or mismatched shapes) to be defined
"""

from __future__ import annotations

from db.errors import CataloganError


class MetricsError(CataloganError):
    """Raised when the evaluator or a metric cannot produce a number."""


class EvaluatorWeightsError(MetricsError):
    """Raised when the evaluator weights file is missing, unreadable, or does not match its recorded sha256."""


class InsufficientSamplesError(MetricsError, ValueError):
    """Raised when a metric gets too few samples, or feature arrays whose shapes do not fit together."""
