"""Typed settings, read from `CATALOGAN_*` environment variables once per process.

Each concern has its own class so an entry point builds only what it needs and passes it down.
The defaults are the embedded stack: a SQLite file and a local folder under `./catalogan-data/`.
S3 credentials, region and endpoint are *not* settings of ours: boto3 reads them the standard AWS way
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, instance roles).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("catalogan-data")


def _config() -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix="CATALOGAN_", extra="ignore", frozen=True)


class DataSettings(BaseSettings):
    """Where the embedded stack keeps its files (`CATALOGAN_DATA_DIR`)."""

    model_config = _config()

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Folder for the embedded SQLite file, objects and broker.")

    @property
    def resolved(self) -> Path:
        """The data folder as an absolute path."""
        return self.data_dir.expanduser().resolve()


class DatabaseSettings(BaseSettings):
    """SQL database (`CATALOGAN_DATABASE_URL`), any SQLAlchemy URL; PostgreSQL in production."""

    model_config = _config()

    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite file in the data folder.")
    database_pool_size: int = Field(default=5, ge=1, le=100)
    database_echo: bool = False

    @field_validator("database_url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        # `postgresql://` means psycopg2 to SQLAlchemy; we ship psycopg 3.
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    def url(self, data: DataSettings | None = None) -> str:
        """The effective SQLAlchemy URL (the embedded SQLite file when none is set)."""
        if self.database_url:
            return self.database_url
        folder = (data or DataSettings()).resolved
        return f"sqlite:///{folder / 'catalogan.db'}"


class StorageSettings(BaseSettings):
    """Object store (`CATALOGAN_STORAGE_URL`): `s3://bucket/prefix`, `file:///path` or `memory://`."""

    model_config = _config()

    storage_url: str = Field(default="", description="Object store URL; empty = a folder in the data folder.")
    presigned_url_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    def url(self, data: DataSettings | None = None) -> str:
        """The effective object-store URL (a local folder when none is set)."""
        if self.storage_url:
            return self.storage_url
        folder = (data or DataSettings()).resolved
        return (folder / "objects").as_uri()


class BrokerSettings(BaseSettings):
    """Celery broker (`CATALOGAN_BROKER_URL`): a Redis URL; empty = the embedded filesystem broker."""

    model_config = _config()

    broker_url: str = Field(default="", description="redis://host:port/db; empty = kombu filesystem:// in the data folder.")

    @property
    def embedded(self) -> bool:
        """True when messages travel through a local folder instead of Redis."""
        return not self.broker_url
