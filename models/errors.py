"""Errors raised by the models package (training, checkpoints, registry).

    CataloganError (db.errors)
    └── ModelError                    raised by models/
        ├── UnknownPresetError        a preset name that `PRESETS` does not hold (also a ValueError)
        ├── CheckpointError           checkpoint bytes that cannot be read or are of another format version
        │   └── CheckpointFileError   a file a person gave as a checkpoint is not one (bad input; a ValueError)
        ├── TrainingError             a training run that cannot start or continue (e.g. a worker failed)
        │   └── TrainingInputError    the run's arguments break a rule, naming the option (a ValueError)
        ├── DataError                 training data unreadable or inconsistent (models/data/; a ValueError)
        └── MetricsError              the evaluator or a metric cannot produce a number
            ├── EvaluatorWeightsError the evaluator weights are missing or their sha256 does not match
            └── InsufficientSamplesError a metric got too few samples (or mismatched shapes; a ValueError)

The `ValueError` ones are bad input: the CLI exits 2 (USAGE) for them, 1 for the other `ModelError`s
(db/cli_support.py).

Registry look-ups raise `db.errors.NotFoundError`; a promotion below the metric gates raises
`db.errors.PromotionRefusedError` (a ConflictError; the gates live in `db/promotion.py`), re-exported here.
"""

from __future__ import annotations

from db.errors import CataloganError
from db.errors import PromotionRefusedError as PromotionRefusedError


class ModelError(CataloganError):
    """Raised by the models package."""


class UnknownPresetError(ModelError, ValueError):
    """Raised when a preset name is not one of `models.config.PRESETS`."""


class CheckpointError(ModelError):
    """Raised when checkpoint bytes are unreadable, incomplete or of an unsupported format version."""


class CheckpointFileError(CheckpointError, ValueError):
    """Raised when a file given as a checkpoint (`evaluate FILE`, `models register FILE`, `train --init-from`)
    is not a catalogan checkpoint it can use; the message names the file (or the option) in one line."""


class TrainingError(ModelError):
    """Raised when a training run cannot start or continue for a reason other than its arguments (a worker
    failed, the run is live elsewhere, no final checkpoint)."""


class TrainingInputError(TrainingError, ValueError):
    """Raised when a training run's arguments break a rule (preset, steps, data, workers vs GPUs, nothing to
    resume, --init-from, ...); the message names the option, and nothing has been trained."""


class DataError(ModelError, ValueError):
    """Raised when training data is unreadable or inconsistent; the message names the file."""


class MetricsError(ModelError):
    """Raised when the evaluator or a metric cannot produce a number."""


class EvaluatorWeightsError(MetricsError):
    """Raised when the evaluator weights file is missing, unreadable, or does not match its recorded sha256."""


class InsufficientSamplesError(MetricsError, ValueError):
    """Raised when a metric gets too few samples, or feature arrays whose shapes do not fit together."""
