"""Tenants and their API keys.

An API key looks like `cg_<prefix>_<secret>`. Only its SHA-256 is stored, next to the short public
`prefix` used to find the row; the clear key is returned once, by `create_api_key`, and never again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import AuthenticationError, ConflictError, NotFoundError
from db.quotas import QUEUES_BY_PRIORITY
from db.storage.keys import validate_key_segment
from db.tables import ApiKey, Tenant, utcnow

# The longest a rotated webhook secret may keep signing next to its successor.
MAX_WEBHOOK_SECRET_GRACE = dt.timedelta(days=7)

API_KEY_SCHEME = "cg"
API_KEY_PREFIX_BYTES = 6  # 12 hex characters: the public lookup part
API_KEY_SECRET_BYTES = 32  # 256 bits of randomness: the part that must stay secret

MAX_TENANT_NAME_CHARS = 64  # db.tables.Tenant.name


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A freshly created key: `clear_key` is shown to the user once and is not stored anywhere."""

    key_id: str
    tenant_id: str
    name: str
    prefix: str
    clear_key: str


def _new_id() -> str:
    return uuid.uuid4().hex


def hash_api_key(clear_key: str) -> str:
    """The hex SHA-256 of a clear key, as stored in `api_keys.key_hash`."""
    return hashlib.sha256(clear_key.encode("utf-8")).hexdigest()


def create_tenant(
    session: Session,
    name: str,
    *,
    webhook_url: str | None = None,
    images_per_day: int | None = None,
    max_concurrent_jobs: int | None = None,
    requests_per_minute: int | None = None,
    highest_queue: str | None = None,
) -> Tenant:
    """Insert a tenant; its name must be a valid key segment of at most `MAX_TENANT_NAME_CHARS` characters
    (the column's width: PostgreSQL refuses a longer one, SQLite would store it) and unique (else
    `ConflictError`)."""
    if len(name) > MAX_TENANT_NAME_CHARS:
        raise ValueError(f"tenant name: {len(name)} characters; at most {MAX_TENANT_NAME_CHARS}")
    validate_key_segment(name, "tenant name")
    tenant = Tenant(id=_new_id(), name=name, webhook_url=webhook_url)
    set_tenant_limits(
        tenant,
        images_per_day=images_per_day,
        max_concurrent_jobs=max_concurrent_jobs,
        requests_per_minute=requests_per_minute,
        highest_queue=highest_queue,
    )
    try:
        with session.begin_nested():  # a savepoint, so a duplicate does not spoil the caller's transaction
            session.add(tenant)
    except IntegrityError as exc:
        raise ConflictError(f"a tenant named {name!r} already exists") from exc
    return tenant


def set_tenant_limits(
    tenant: Tenant,
    *,
    images_per_day: int | None = None,
    max_concurrent_jobs: int | None = None,
    requests_per_minute: int | None = None,
    highest_queue: str | None = None,
) -> None:
    """Change the given quotas and queue allowance of a tenant (None = unchanged); raise `ValueError` for a
    `highest_queue` that is not one of the queues."""
    if highest_queue is not None and highest_queue not in QUEUES_BY_PRIORITY:
        raise ValueError(f"highest queue {highest_queue!r}: must be one of {', '.join(QUEUES_BY_PRIORITY)}")
    values = {
        "images_per_day": images_per_day,
        "max_concurrent_jobs": max_concurrent_jobs,
        "requests_per_minute": requests_per_minute,
        "highest_queue": highest_queue,
    }
    for name, value in values.items():
        if value is not None:
            setattr(tenant, name, value)


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    """Return the tenant, or raise `NotFoundError`."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFoundError(f"tenant {tenant_id!r} not found")
    return tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant:
    """Return the tenant called `name`, or raise `NotFoundError`."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
    if tenant is None:
        raise NotFoundError(f"tenant named {name!r} not found")
    return tenant


def set_webhook_secret(
    session: Session,
    name: str,
    secret: str,
    *,
    grace: dt.timedelta = dt.timedelta(0),
    now: dt.datetime | None = None,
) -> Tenant:
    """Replace the webhook signing secret of the tenant called `name` (`NotFoundError` if none).

    The tenant row is locked, and the dispatcher reads the secrets when it claims a delivery: every attempt
    claimed after this commits is signed with `secret`, retries of earlier events included. With a `grace`
    period the replaced secret signs each attempt too (a second signature in the header) until it ends, so a
    receiver still checking the old one accepts them while it switches over; with none it stops at once.
    """
    if grace < dt.timedelta(0) or grace > MAX_WEBHOOK_SECRET_GRACE:
        raise ValueError(f"grace: must be between 0 and {MAX_WEBHOOK_SECRET_GRACE}, not {grace}")
    tenant = session.scalars(select(Tenant).where(Tenant.name == name).with_for_update()).one_or_none()
    if tenant is None:
        raise NotFoundError(f"tenant named {name!r} not found")
    keep = grace > dt.timedelta(0) and tenant.webhook_secret is not None
    tenant.previous_webhook_secret = tenant.webhook_secret if keep else None
    tenant.previous_webhook_secret_until = (now or utcnow()) + grace if keep else None
    tenant.webhook_secret = secret
    session.flush()
    return tenant


def create_api_key(session: Session, tenant_id: str, *, name: str = "") -> IssuedApiKey:
    """Issue a new key for a tenant; store only its hash. The returned `clear_key` cannot be recovered later."""
    get_tenant(session, tenant_id)
    prefix = secrets.token_hex(API_KEY_PREFIX_BYTES)
    clear_key = f"{API_KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(API_KEY_SECRET_BYTES)}"
    row = ApiKey(
        id=_new_id(), tenant_id=tenant_id, name=name, prefix=prefix, key_hash=hash_api_key(clear_key)
    )
    session.add(row)
    session.flush()
    return IssuedApiKey(row.id, tenant_id, name, prefix, clear_key)


def revoke_api_key(session: Session, key_id: str, *, tenant_id: str | None = None) -> bool:
    """Revoke a key at once; returns False when it was already revoked. Raises `NotFoundError` if unknown."""
    query = select(ApiKey).where(ApiKey.id == key_id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    row = session.scalars(query).one_or_none()
    if row is None:
        raise NotFoundError(f"API key {key_id!r} not found")
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True


def _prefix_of(clear_key: str) -> str | None:
    parts = clear_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_SCHEME or len(parts[1]) != 2 * API_KEY_PREFIX_BYTES:
        return None
    return parts[1]


def authenticate_api_key(session: Session, clear_key: str) -> Tenant:
    """Return the tenant a clear key belongs to; raise `AuthenticationError` if it is malformed, unknown or revoked.

    The hash comparison takes constant time, and the error never repeats the key.
    """
    prefix = _prefix_of(clear_key)
    if prefix is None:
        raise AuthenticationError("malformed API key")
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
    if row is None or not hmac.compare_digest(row.key_hash, hash_api_key(clear_key)):
        raise AuthenticationError(f"unknown API key {prefix}…")
    if row.revoked_at is not None:
        raise AuthenticationError(f"API key {prefix}… was revoked")
    return get_tenant(session, row.tenant_id)
