"""Tenants and API keys: only hashes are stored, the clear key works once issued, revoked keys fail."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import AuthenticationError, ConflictError, InvalidKeyError, NotFoundError
from db.tables import ApiKey
from db.tenants import (
    authenticate_api_key,
    create_api_key,
    create_tenant,
    get_tenant,
    get_tenant_by_name,
    hash_api_key,
    revoke_api_key,
)


def test_an_issued_key_authenticates_as_its_tenant(session_factory: sessionmaker[Session]) -> None:
    """Given a tenant with a new key, authenticating with the clear key returns that tenant."""
    with transaction(session_factory) as session:
        tenant = create_tenant(session, "acme", webhook_url="https://acme.example/hook")
        issued = create_api_key(session, tenant.id, name="etl")

    with session_factory() as session:
        assert authenticate_api_key(session, issued.clear_key).id == tenant.id
        assert get_tenant_by_name(session, "acme").webhook_url == "https://acme.example/hook"
    assert issued.clear_key.startswith(f"cg_{issued.prefix}_")


def test_only_the_hash_of_a_key_is_stored(session_factory: sessionmaker[Session]) -> None:
    """Given an issued key, no column of its row contains the clear key or its secret part."""
    with transaction(session_factory) as session:
        tenant = create_tenant(session, "acme")
        issued = create_api_key(session, tenant.id)

    with session_factory() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.id == issued.key_id)).one()
    stored = " ".join(str(getattr(row, column.key)) for column in ApiKey.__table__.columns)
    secret = issued.clear_key.split("_", 2)[2]  # the secret itself may contain "_"
    assert secret not in stored and issued.clear_key not in stored
    assert row.key_hash == hash_api_key(issued.clear_key)


def test_a_revoked_key_no_longer_authenticates(session_factory: sessionmaker[Session]) -> None:
    """Given a revoked key, authentication fails; a second revoke reports nothing changed; others still work."""
    with transaction(session_factory) as session:
        tenant = create_tenant(session, "acme")
        revoked = create_api_key(session, tenant.id)
        kept = create_api_key(session, tenant.id)
        assert revoke_api_key(session, revoked.key_id, tenant_id=tenant.id)
        assert not revoke_api_key(session, revoked.key_id)

    with session_factory() as session:
        with pytest.raises(AuthenticationError, match="revoked"):
            authenticate_api_key(session, revoked.clear_key)
        assert authenticate_api_key(session, kept.clear_key).id == tenant.id


@pytest.mark.parametrize("mangle", ["wrong-secret", "unknown-prefix", "garbage", "empty"])
def test_wrong_keys_fail_without_echoing_the_secret(
    session_factory: sessionmaker[Session], mangle: str
) -> None:
    """Given a key with a wrong secret, an unknown prefix or no structure, authentication fails and the
    error message does not contain the secret."""
    with transaction(session_factory) as session:
        tenant = create_tenant(session, "acme")
        issued = create_api_key(session, tenant.id)
    secret = issued.clear_key.split("_", 2)[2]  # the secret itself may contain "_"
    candidate = {
        "wrong-secret": issued.clear_key[:-4] + "AAAA",
        "unknown-prefix": f"cg_{'0' * 12}_{secret}",
        "garbage": "Bearer nonsense",
        "empty": "",
    }[mangle]

    with session_factory() as session, pytest.raises(AuthenticationError) as caught:
        authenticate_api_key(session, candidate)
    assert secret not in str(caught.value)


def test_tenant_names_are_unique_and_validated(session_factory: sessionmaker[Session]) -> None:
    """Given a tenant "acme", creating another "acme" raises ConflictError and leaves the first usable;
    a name that could not be a key segment is refused."""
    with transaction(session_factory) as session:
        first = create_tenant(session, "acme")
        with pytest.raises(ConflictError, match="acme"):
            create_tenant(session, "acme")
        assert get_tenant(session, first.id).name == "acme"
        with pytest.raises(InvalidKeyError, match="tenant name"):
            create_tenant(session, "../etc")


def test_unknown_tenant_and_key_are_not_found(session_factory: sessionmaker[Session]) -> None:
    """Given no such rows, lookups, key creation and revocation raise NotFoundError."""
    with transaction(session_factory) as session:
        with pytest.raises(NotFoundError):
            get_tenant(session, "nope")
        with pytest.raises(NotFoundError):
            create_api_key(session, "nope")
        with pytest.raises(NotFoundError):
            revoke_api_key(session, "nope")
