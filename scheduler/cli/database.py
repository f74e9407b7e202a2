"""The session factory of CLI commands that talk to SQL directly (tenants, keys, dlq)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db.engine import engine_from_settings, make_session_factory
from db.settings import DatabaseSettings, DataSettings


def cli_session_factory() -> sessionmaker[Session]:
    """A session factory on CATALOGAN_DATABASE_URL (or the embedded SQLite file)."""
    return make_session_factory(engine_from_settings(DatabaseSettings(), DataSettings()))
