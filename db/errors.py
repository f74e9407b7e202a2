"""Errors raised by the persistence layer.

    CataloganError                 root of every error catalogan raises on purpose
    └── DbError                    raised by db/
        ├── ConfigError            a setting is missing or unsafe
        ├── NotFoundError          a row does not exist (or belongs to another tenant)
        ├── InvalidTransitionError a status change the transitions map does not allow
        ├── StaleAttemptError      a write from an attempt that no longer holds the lease
        ├── ConflictError          a uniqueness rule was broken (idempotency key, name@version)
        └── StorageError           the object store failed
            ├── InvalidKeyError    a key broke a naming rule (permanent)
            ├── ObjectNotFoundError the key holds no object (permanent)
            └── TransientStorageError a retryable failure: timeout, throttling, 5xx

`scheduler` maps these to HTTP statuses and CLI exit codes in one place each.
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


class StorageError(DbError):
    """Raised when the object store fails."""


class InvalidKeyError(StorageError, ValueError):
    """Raised when an object key breaks a naming rule; the message names the key and the rule."""


class ObjectNotFoundError(StorageError):
    """Raised when a key holds no object."""


class TransientStorageError(StorageError):
    """Raised when the object store fails in a way worth retrying (timeouts, throttling, 5xx)."""
