"""Typed settings, read from `CATALOGAN_*` environment variables once per process.

Each concern has its own class so an entry point builds only what it needs and passes it down.
The defaults are the embedded stack: a SQLite file and a local folder under `./catalogan-data/`.
S3 credentials, region and endpoint are *not* settings of ours: boto3 reads them the standard AWS way
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, instance roles).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings as PydanticBaseSettings
from pydantic_settings import SettingsConfigDict

from db.errors import ConfigError

DEFAULT_DATA_DIR = Path("catalogan-data")
# Passwords that ship in examples and images (ours, MinIO's, PostgreSQL's): production refuses them.
DEVELOPMENT_SECRETS = frozenset(
    {"", "catalogan", "catalogan-dev-secret", "minioadmin", "postgres", "password", "secret", "changeme", "CHANGE_ME"}
)


class SettingsError(ConfigError, ValueError):
    """Raised when a `CATALOGAN_*` variable breaks its setting's rule; the message names the variable.

    A `ConfigError` (the CLI prints one line and exits 6) and a `ValueError` (what pydantic raised before).
    """


def settings_error_message(cls: type[PydanticBaseSettings], exc: ValidationError) -> str:
    """One line naming each variable that failed and its rule (never the value: it may be a secret)."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ())) or "?"
        name = f"{prefix}{field.split('.')[0].upper()}"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{name}: {message}")
    return "; ".join(parts) + " (see docs/configuration.md)"


class BaseSettings(PydanticBaseSettings):
    """pydantic-settings' BaseSettings whose validation errors are one `SettingsError` line naming the variable
    (`CATALOGAN_DATABASE_POOL_SIZE: Input should be a valid integer ...`) instead of pydantic's dump."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(settings_error_message(type(self), exc)) from None


def _config() -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix="CATALOGAN_", extra="ignore", frozen=True)


# The kombu transports `CATALOGAN_BROKER_URL` may name: Redis over TCP, over TLS, or over a Unix socket.
BROKER_SCHEMES = ("redis", "rediss", "redis+socket")
STORAGE_URL_RULE = "must be s3://bucket[/prefix], file:///absolute/path or memory:// (or empty for a folder in the data folder)"


def check_storage_url(url: str) -> str:
    """`url` when it is an object-store URL `db.storage.open_store` opens; `ValueError` stating the rule (never
    the URL) otherwise."""
    from db.storage.keys import validate_key

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(STORAGE_URL_RULE) from None
    scheme = parts.scheme.lower()
    if scheme == "memory" and url.lower().startswith("memory://"):
        return url
    if scheme == "file" and url.lower().startswith("file://"):
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"{STORAGE_URL_RULE}: a file:// URL takes an absolute path (three slashes)")
        return url
    if scheme == "s3" and url.lower().startswith("s3://"):
        if not parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                f"{STORAGE_URL_RULE}: an s3:// URL names a bucket and takes no query or fragment"
            )
        prefix = parts.path.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except ValueError:
                raise ValueError(f"{STORAGE_URL_RULE}: the prefix breaks the object-key rules") from None
        return url
    raise ValueError(STORAGE_URL_RULE)


class DataSettings(BaseSettings):
    """Where the embedded stack keeps its files (`CATALOGAN_DATA_DIR`)."""

    model_config = _config()

    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR, description="Folder for the embedded SQLite file, objects and broker."
    )

    @property
    def resolved(self) -> Path:
        """The data folder as an absolute path."""
        return self.data_dir.expanduser().resolve()


class DatabaseSettings(BaseSettings):
    """SQL database (`CATALOGAN_DATABASE_URL`), any SQLAlchemy URL; PostgreSQL in production."""

    model_config = _config()

    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty = SQLite file in the data folder."
    )
    database_pool_size: int = Field(default=5, ge=1, le=100)
    database_echo: bool = False

    @field_validator("database_url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        # `postgresql://` means psycopg2 to SQLAlchemy; we ship psycopg 3.
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        if value:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                backend = make_url(value).get_backend_name()
            except ArgumentError:
                backend = None  # the message below never repeats the URL: it may hold a password
            if backend not in ("postgresql", "sqlite"):
                raise ValueError(
                    "must be a PostgreSQL or SQLite URL: postgresql://user:password@host:5432/db or "
                    "sqlite:////absolute/path.db (or empty for the embedded SQLite file)"
                )
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
    storage_public_endpoint_url: str = Field(
        default="",
        description="S3 endpoint that presigned URLs are signed for (what browsers and ETL hosts reach); "
        "empty = the endpoint the services use (AWS_ENDPOINT_URL).",
    )

    @field_validator("storage_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        # Checked here, at start, so a bad URL is one line naming the variable (exit 6) rather than the object
        # store's "unsupported object-store URL" when it is first opened (exit 5, no variable named).
        if value:
            check_storage_url(value)
        return value

    @field_validator("storage_public_endpoint_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc):
            raise ValueError("must be an http:// or https:// URL such as https://s3.example.com")
        return value.rstrip("/")

    def url(self, data: DataSettings | None = None) -> str:
        """The effective object-store URL (a local folder when none is set)."""
        if self.storage_url:
            return self.storage_url
        folder = (data or DataSettings()).resolved
        return (folder / "objects").as_uri()


class BrokerSettings(BaseSettings):
    """Celery broker (`CATALOGAN_BROKER_URL`): a Redis URL (`BROKER_SCHEMES`); empty = the embedded filesystem
    broker."""

    model_config = _config()

    broker_url: str = Field(
        default="", description="redis://host:port/db; empty = kombu filesystem:// in the data folder."
    )

    @field_validator("broker_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        # kombu picks its transport by the scheme: anything else was a `KeyError: 'No such transport'` traceback
        # when the first worker, beat or API process built its Celery app. Our transport options are Redis's.
        if value:
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
            except ValueError:
                parts = None
            if parts is None or parts.scheme.lower() not in BROKER_SCHEMES:
                raise ValueError(
                    "must be a Redis URL: redis://host:6379/0, rediss://host:6380/0 (TLS) or "
                    "redis+socket:///path/to/redis.sock (or empty for the embedded folder broker)"
                )
        return value

    @property
    def embedded(self) -> bool:
        """True when messages travel through a local folder instead of Redis."""
        return not self.broker_url


def default_credential_problems(
    database: DatabaseSettings, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Why the credentials in use are development defaults (empty when none is): production refuses them.

    Checks the database URL's password and `AWS_SECRET_ACCESS_KEY` against `DEVELOPMENT_SECRETS`.
    """
    env = os.environ if environ is None else environ
    problems = []
    if database.database_url and not database.database_url.startswith("sqlite"):
        password = urlsplit(database.database_url).password
        if password is None or password in DEVELOPMENT_SECRETS:
            problems.append("CATALOGAN_DATABASE_URL carries no password or a development default one")
    secret = env.get("AWS_SECRET_ACCESS_KEY")
    if secret is not None and secret in DEVELOPMENT_SECRETS:
        problems.append("AWS_SECRET_ACCESS_KEY is a development default")
    return problems
