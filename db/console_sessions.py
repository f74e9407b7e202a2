"""Console sessions: a browser signed in with an API key, kept server-side in SQL.

The browser's cookie holds a random token; the table holds only its SHA-256, the API key's id, the tenant,
a CSRF token and the expiry. The API key itself is never stored. A session ends at its expiry, at sign-out,
and as soon as its API key is revoked (every lookup checks the key).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.tables import ApiKey, ConsoleSession, Tenant, utcnow
from db.tenants import authenticate_api_key

SESSION_TOKEN_BYTES = 32  # 256 bits in the cookie
MAX_SESSIONS_PER_KEY = 20  # live sessions of one API key; signing in once more ends the oldest
CSRF_TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who a live session belongs to: the tenant, and the API key (id and name) it signed in with."""

    tenant: Tenant
    key_id: str
    key_name: str
    csrf_token: str
    expires_at: dt.datetime


def hash_session_token(token: str) -> str:
    """The hex SHA-256 of a cookie token, as stored in `console_sessions.token_hash`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def authenticate_console_key(session: Session, clear_key: str) -> tuple[Tenant, ApiKey]:
    """The tenant and key row of a clear API key; `AuthenticationError` when malformed, unknown or revoked."""
    tenant = authenticate_api_key(session, clear_key)
    prefix = clear_key.split("_", 2)[1]  # well-formed: authenticate_api_key checked it
    key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one()
    return tenant, key


def create_console_session(
    session: Session, *, api_key_id: str, tenant_id: str, ttl_seconds: float, now: dt.datetime | None = None
) -> tuple[str, str]:
    """Open a session for an authenticated key; returns (cookie token, CSRF token). Expired rows are purged,
    and so are this key's oldest live sessions beyond `MAX_SESSIONS_PER_KEY - 1`: a key signing in again and
    again keeps at most that many rows."""
    now = now or utcnow()
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    kept = (
        select(ConsoleSession.token_hash)
        .where(ConsoleSession.api_key_id == api_key_id)
        .order_by(ConsoleSession.created_at.desc(), ConsoleSession.token_hash)
        .limit(MAX_SESSIONS_PER_KEY - 1)
    )
    session.execute(
        delete(ConsoleSession).where(
            ConsoleSession.api_key_id == api_key_id, ConsoleSession.token_hash.not_in(kept.scalar_subquery())
        )
    )
    token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
    csrf = secrets.token_urlsafe(CSRF_TOKEN_BYTES)
    session.add(
        ConsoleSession(
            token_hash=hash_session_token(token),
            api_key_id=api_key_id,
            tenant_id=tenant_id,
            csrf_token=csrf,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl_seconds),
        )
    )
    session.flush()
    return token, csrf


def find_console_session(session: Session, token: str, *, now: dt.datetime | None = None) -> SignedIn | None:
    """The live session for a cookie token, or None when it is unknown, expired, or its key was revoked."""
    now = now or utcnow()
    row = session.execute(
        select(ConsoleSession, ApiKey, Tenant)
        .join(ApiKey, ApiKey.id == ConsoleSession.api_key_id)
        .join(Tenant, Tenant.id == ConsoleSession.tenant_id)
        .where(ConsoleSession.token_hash == hash_session_token(token))
    ).one_or_none()
    if row is None:
        return None
    console, key, tenant = row
    if console.expires_at <= now or key.revoked_at is not None or key.tenant_id != tenant.id:
        return None
    return SignedIn(tenant, key.id, key.name, console.csrf_token, console.expires_at)


def end_console_session(session: Session, token: str) -> bool:
    """Sign out: delete the session of a cookie token; True when there was one."""
    result = session.execute(
        delete(ConsoleSession).where(ConsoleSession.token_hash == hash_session_token(token))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
