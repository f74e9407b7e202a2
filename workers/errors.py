"""Errors raised by the workers.

CataloganError (db.errors)
└── WorkerError           raised by workers/
    ├── InjectedFaultError a test-only fault (CATALOGAN_TEST_FAULTS=1 and a job option asked for it)
    ├── WorkerConfigError  the worker cannot start as configured (device, queues)
    ├── ProvenanceError    a file to verify carries no (or unreadable) catalogan provenance
    ├── PreviewRequestError a preview task's argument breaks the worker contract (count, key_prefix, model)
    ├── CheckpointMismatchError a checkpoint's bytes are not the ones its model version registered
    ├── ExportFolderError  an export folder holds files no export recorded, or another job's export
    └── FinalizeConflictError a job's chunks kept being claimed again while finalize wrote its manifests
"""

from __future__ import annotations

from db.errors import CataloganError


class WorkerError(CataloganError):
    """Raised by the worker package."""


class InjectedFaultError(WorkerError):
    """Raised when fault injection is enabled and a job's options ask this chunk to fail (tests only)."""


class WorkerConfigError(WorkerError, ValueError):
    """Raised when a worker cannot start as configured (unknown device, unknown queue)."""


class ProvenanceError(WorkerError, ValueError):
    """Raised when a file to verify is not a catalogan image or its provenance is missing or unreadable."""


class PreviewRequestError(WorkerError, ValueError):
    """Raised when a `catalogan.generate_preview` argument breaks the contract (fields, count, key_prefix)."""


class CheckpointMismatchError(WorkerError):
    """Raised when a checkpoint's sha256 differs from its model version's registered one (never generate from it)."""


class ExportFolderError(WorkerError, ValueError):
    """Raised when an export folder cannot take this job's export: it holds files no export recorded, or
    another job's export that the caller did not ask to replace. The message starts with `--out`."""


class FinalizeConflictError(WorkerError):
    """Raised when a job's chunks were claimed again during every one of finalize's passes (reruns kept
    changing the image rows while the manifests were written); a later finalize can succeed."""
