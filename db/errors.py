"""Errors raised by the persistence layer.

    CataloganError                 root of every error catalogan raises on purpose
    └── DbError                    raised by db/
        ├── ConfigError            a setting is missing or unsafe
        ├── NotFoundError          a row does not exist (or belongs to another tenant)
        ├── InvalidTransitionError a status change the transitions map does not allow
        ├── StaleAttemptError      a write from an attempt that no longer holds the lease
        ├── ConflictError          a uniqueness rule was broken (idempotency key, name@version)
        │   ├── IdempotencyMismatchError an idempotency key reused with a different request
        │   └── PromotionRefusedError a promotion below the metric gates without force (db/promotion.py)
        ├── AuthenticationError    an API key is missing, unknown, malformed or revoked
        ├── PlanningError          a job spec broke a rule (`field` and `rule` name them; also a ValueError)
        ├── LimitExceededError     a limit was hit (carries `retry_after_seconds`)
        │   └── QuotaExceededError a tenant's images per day or concurrent jobs are used up
        ├── ServiceUnavailableError a backing service (broker, workers, the API) did not answer
        └── StorageError           the object store failed
            ├── InvalidKeyError    a key broke a naming rule (permanent)
            ├── ObjectNotFoundError the key holds no object (permanent)
            └── TransientStorageError a retryable failure: timeout, throttling, 5xx

HTTP statuses are mapped in one place (`scheduler/api/problems.py`), CLI exit codes in another
(`db/cli_support.py`). Each package adds its own subtree under `CataloganError` in its `errors.py`.
"""

from __future__ import annotations


class CataloganError(Exception):
    """Raised for every failure catalogan reports on purpose; the root of all project errors."""


class DbError(CataloganError):
    """Raised by the persistence layer."""


class ConfigError(DbError):
    """Raised when a setting is missing, malformed or unsafe."""


class NotFoundError(DbError):
    """Raised when a requested row does not exist (or is not visible to the caller's tenant)."""


class InvalidTransitionError(DbError):
    """Raised when a status change is not in the allowed-transitions map."""


class StaleAttemptError(DbError):
    """Raised when a chunk write comes from an attempt that no longer holds the chunk's lease."""


class ConflictError(DbError):
    """Raised when a write would break a uniqueness rule (idempotency key, model name@version)."""


class IdempotencyMismatchError(ConflictError):
    """Raised when an idempotency key is reused with a different request body."""

    field = "Idempotency-Key"
    rule = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request body")
        self.key = key


class PromotionRefusedError(ConflictError):
    """Raised when a model version is promoted below the configured metric gates without `force`."""


class PlanningError(DbError, ValueError):
    """Raised when a job spec breaks a rule: `field` names it (e.g. `items[2].count`), `rule` says which rule,
    and the message starts with the field."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


class AuthenticationError(DbError):
    """Raised when an API key is missing, unknown, malformed or revoked (the message never echoes the key)."""


class LimitExceededError(DbError):
    """Raised when a limit is hit; `retry_after_seconds` says when trying again makes sense."""

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(1, int(retry_after_seconds))


class QuotaExceededError(LimitExceededError):
    """Raised when a job would exceed its tenant's images-per-day or concurrent-jobs quota."""


class ServiceUnavailableError(DbError):
    """Raised when a backing service — the broker, the workers, the API — did not answer."""


class StorageError(DbError):
    """Raised when the object store fails."""


class InvalidKeyError(StorageError, ValueError):
    """Raised when an object key breaks a naming rule; the message names the key and the rule."""


class ObjectNotFoundError(StorageError):
    """Raised when a key holds no object."""


class TransientStorageError(StorageError):
    """Raised when the object store fails in a way worth retrying (timeouts, throttling, 5xx)."""
